"""
Summarise a py-spy ``--format raw`` profile (collapsed stacks): the functions with the most
samples, by own time and by inclusive time.

    python -m benchmarks.profile_summary FILE [--top 25]
"""

import argparse
import collections
import re


def load(path):
    stacks = []
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            stack, _, count = line.rpartition(" ")
            stacks.append((stack.split(";"), int(count)))
    return stacks


def short(frame):
    # "function (path/to/module.py:123)" -> "function (module.py)"
    match = re.match(r"(.*) \((.*?):?(\d+)?\)$", frame)
    if not match:
        return frame
    name, path = match.group(1), match.group(2)
    return f"{name} ({path.rsplit('/', 2)[-2] + '/' + path.rsplit('/', 1)[-1] if '/' in path else path})"


def summarise(stacks, top):
    total = sum(count for _, count in stacks) or 1
    own = collections.Counter()
    inclusive = collections.Counter()
    for frames, count in stacks:
        names = [short(f) for f in frames]
        own[names[-1]] += count
        for name in set(names):
            inclusive[name] += count
    lines = [f"{total} samples", "", "own time:"]
    lines += [f"  {100 * c / total:5.1f}%  {name}" for name, c in own.most_common(top)]
    lines += ["", "inclusive time:"]
    lines += [f"  {100 * c / total:5.1f}%  {name}" for name, c in inclusive.most_common(top)]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("path")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    print(summarise(load(args.path), args.top))


if __name__ == "__main__":
    main()
