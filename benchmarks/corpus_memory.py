"""Peak memory of reading a corpus file made of 1 MB lines.

Writes a TSV of `--lines` lines of 1 MB (English side) plus 1,000 ordinary
pairs, reads it with `tf_mbalign.data.corpus.read_tsv` and prints the peak
Python allocation (tracemalloc) and the process's peak RSS. The reader keeps
at most `--max_chars` characters per side, so the peak should follow the
longest line, not the file size.

Usage:
  python benchmarks/corpus_memory.py [--lines 48]
"""

import argparse
import os
import resource
import tempfile
import time
import tracemalloc

from tf_mbalign.data import corpus as corpus_lib


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=48)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "en-de.tsv")
        with open(path, "wb") as f:
            for i in range(args.lines):
                f.write(b"E" * (1 << 20) + b"\t" + f"line {i}".encode() + b"\n")
            for i in range(1000):
                f.write(f"sentence {i}\tSatz {i}\n".encode())
        size = os.path.getsize(path)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started = time.time()
        tracemalloc.start()
        corpus = corpus_lib.read_tsv(path)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        seconds = time.time() - started
        rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"file {size / 2**20:.0f} MiB ({args.lines} lines of 1 MiB + 1000 pairs): "
          f"{len(corpus)} pairs, {corpus.stats.truncated} truncated, {seconds:.2f}s")
    print(f"peak Python allocation while reading: {peak / 2**20:.1f} MiB")
    print(f"process peak RSS: {rss_before / 1024:.0f} MiB before, {rss_after / 1024:.0f} MiB after")


if __name__ == "__main__":
    main()
