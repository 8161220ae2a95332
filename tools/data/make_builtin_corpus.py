#!/usr/bin/env python3
"""Builds troupe's built-in training corpus from the Jargon File (public domain).

The source is Debian's jargon-text package (Jargon File 4.4.7, /usr/share/doc/jargon-text/
jargon.txt.gz). Each lexicon entry becomes one document; documents are separated by a line that
holds only a form feed, the format troupe's text corpora use.

    apt-get download jargon-text && dpkg -x jargon-text_*.deb /tmp/jargon
    tools/data/make_builtin_corpus.py /tmp/jargon/usr/share/doc/jargon-text/jargon.txt.gz \
        runtime/data/corpus/jargon-4.4.7.txt
"""
import gzip
import re
import sys


def entries(text):
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(r"^   :[^:]+:", line))
    end = next(i for i, line in enumerate(lines) if line.replace("\u00a0", " ").startswith("Appendix A. Hacker Folklore")
               and i > start)
    current = []
    for line in lines[start:end]:
        if re.match(r"^   :[^:]+:", line) and current:
            yield current
            current = []
        current.append(line[3:] if line.startswith("   ") else line)
    if current:
        yield current


def main():
    source, target = sys.argv[1], sys.argv[2]
    opener = gzip.open if source.endswith(".gz") else open
    with opener(source, "rt", encoding="utf-8") as f:
        text = f.read()
    documents = ["\n".join(lines).strip() + "\n" for lines in entries(text)]
    with open(target, "w", encoding="utf-8") as out:
        out.write("\f\n".join(documents))
    print(f"{len(documents)} documents, {sum(len(d.encode()) for d in documents)} bytes")


if __name__ == "__main__":
    main()
