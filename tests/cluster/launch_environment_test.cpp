// Rank, world size and rendezvous from each launcher's environment; Slurm's node lists.

#include <gtest/gtest.h>

#include <map>
#include <string>

#include "runtime/cluster/launch_environment.hpp"
#include "runtime/core/error.hpp"

namespace troupe {
namespace {

std::optional<launch_environment> detect(const std::map<std::string, std::string>& variables) {
  return detect_launch_environment([&](const char* name) -> const char* {
    auto it = variables.find(name);
    return it == variables.end() ? nullptr : it->second.c_str();
  });
}

TEST(LaunchEnvironment, NoLauncherMeansNoRank) {
  EXPECT_FALSE(detect({}).has_value());
  EXPECT_FALSE(detect({{"MASTER_ADDR", "x"}}).has_value());
}

TEST(LaunchEnvironment, TroupesOwnVariables) {
  auto env = detect(
      {{"TROUPE_RANK", "1"}, {"TROUPE_WORLD_SIZE", "4"}, {"TROUPE_RENDEZVOUS", "10.0.0.5:4000"}});
  ASSERT_TRUE(env);
  EXPECT_EQ(env->launcher, "troupe");
  EXPECT_EQ(env->rank, 1);
  EXPECT_EQ(env->world, 4);
  EXPECT_EQ(env->rendezvous_host, "10.0.0.5");
  EXPECT_EQ(env->rendezvous_port, 4000);
}

TEST(LaunchEnvironment, TorchrunMeetsOnThePortAfterItsStore) {
  auto env = detect({{"RANK", "3"},
                     {"WORLD_SIZE", "8"},
                     {"MASTER_ADDR", "head"},
                     {"MASTER_PORT", "29500"},
                     {"LOCAL_RANK", "3"}});
  ASSERT_TRUE(env);
  EXPECT_EQ(env->launcher, "torchrun");
  EXPECT_EQ(env->rank, 3);
  EXPECT_EQ(env->world, 8);
  EXPECT_EQ(env->rendezvous_host, "head");
  EXPECT_EQ(env->rendezvous_port, 29501);
}

TEST(LaunchEnvironment, OpenMpiGivesNoAddress) {
  auto env = detect({{"OMPI_COMM_WORLD_RANK", "0"}, {"OMPI_COMM_WORLD_SIZE", "2"}});
  ASSERT_TRUE(env);
  EXPECT_EQ(env->launcher, "openmpi");
  EXPECT_EQ(env->world, 2);
  EXPECT_EQ(env->rendezvous_host, "");
  EXPECT_EQ(env->rendezvous_port, default_rendezvous_port);
  auto with_port = detect({{"OMPI_COMM_WORLD_RANK", "1"},
                           {"OMPI_COMM_WORLD_SIZE", "2"},
                           {"TROUPE_RENDEZVOUS_PORT", "5555"}});
  EXPECT_EQ(with_port->rendezvous_port, 5555);
}

TEST(LaunchEnvironment, SlurmMeetsOnItsFirstNode) {
  auto env = detect(
      {{"SLURM_PROCID", "2"}, {"SLURM_NTASKS", "4"}, {"SLURM_JOB_NODELIST", "gpu[07-08,11],cpu3"}});
  ASSERT_TRUE(env);
  EXPECT_EQ(env->launcher, "slurm");
  EXPECT_EQ(env->rank, 2);
  EXPECT_EQ(env->world, 4);
  EXPECT_EQ(env->rendezvous_host, "gpu07");
}

TEST(LaunchEnvironment, LeaderWorkerSet) {
  auto env = detect({{"LWS_WORKER_INDEX", "1"},
                     {"LWS_GROUP_SIZE", "2"},
                     {"LWS_LEADER_ADDRESS", "troupe-0.troupe.default"}});
  ASSERT_TRUE(env);
  EXPECT_EQ(env->launcher, "lws");
  EXPECT_EQ(env->rank, 1);
  EXPECT_EQ(env->rendezvous_host, "troupe-0.troupe.default");
}

TEST(LaunchEnvironment, MalformedValuesNameTheVariable) {
  try {
    detect({{"SLURM_PROCID", "two"}, {"SLURM_NTASKS", "4"}});
    FAIL() << "no error";
  } catch (const error& e) {
    EXPECT_NE(std::string(e.what()).find("SLURM_PROCID='two'"), std::string::npos) << e.what();
  }
  EXPECT_THROW(detect({{"TROUPE_RANK", "4"}, {"TROUPE_WORLD_SIZE", "4"}}), error);
  EXPECT_THROW(detect({{"TROUPE_RANK", "0"}}), error);
  EXPECT_THROW(
      detect({{"TROUPE_RANK", "0"}, {"TROUPE_WORLD_SIZE", "2"}, {"TROUPE_RENDEZVOUS", "nohost"}}),
      error);
}

TEST(SlurmNodelist, ExpandsRangesPaddingAndSuffixes) {
  EXPECT_EQ(expand_slurm_nodelist("node1"), (std::vector<std::string>{"node1"}));
  EXPECT_EQ(expand_slurm_nodelist("node[1-3]"),
            (std::vector<std::string>{"node1", "node2", "node3"}));
  EXPECT_EQ(expand_slurm_nodelist("n[08-10,15]"),
            (std::vector<std::string>{"n08", "n09", "n10", "n15"}));
  EXPECT_EQ(expand_slurm_nodelist("a[1-2]-ib,b7"),
            (std::vector<std::string>{"a1-ib", "a2-ib", "b7"}));
  EXPECT_THROW(expand_slurm_nodelist("node[1-"), error);
  EXPECT_THROW(expand_slurm_nodelist("node[3-1]"), error);
  EXPECT_THROW(expand_slurm_nodelist(""), error);
}

}  // namespace
}  // namespace troupe
