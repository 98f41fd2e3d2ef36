#!/usr/bin/env python3
"""check-layout.py: the rules of the source tree that a compiler does not check.

  - only common/proto.c includes msgpack.h, only common/sock.c includes zmq.h;
  - no function of our C or CUDA code outside tests/ is longer than MAX_FUNC lines;
  - coordinator/coord.c and worker/worker.c stay under MAX_CORE lines;
  - arrows point down: a folder includes only headers of the folders below it;
  - docs/architecture.md's file map names every source file.

Usage: check-layout.py [SOURCE_DIR] [--list N]  (--list: the N longest functions)
Exit status 0 when every rule holds, 1 otherwise (each breach on its own line)."""
import os
import re
import sys

MAX_FUNC = 120
MAX_CORE = 600
CORE_FILES = ("coordinator/coord.c", "worker/worker.c")
ONLY_INCLUDER = {"msgpack.h": "common/proto.c", "zmq.h": "common/sock.c"}
# Which folders each folder may include from (besides itself).
LAYERS = {
    "common": set(),
    "kernels": {"common"},
    "train": {"kernels", "common"},
    "collective": {"train", "kernels", "common"},
    "worker": {"collective", "train", "kernels", "common"},
    "agent": {"kernels", "common"},
    "coordinator": {"common"},
    "cli": {"coordinator", "agent", "worker", "collective", "train", "kernels", "common"},
}
SOURCE_DIRS = tuple(LAYERS)


def sources(root):
    for top in SOURCE_DIRS:
        for d, _, files in os.walk(os.path.join(root, top)):
            for f in sorted(files):
                if f.endswith((".c", ".h", ".cu")):
                    p = os.path.join(d, f)
                    yield os.path.relpath(p, root), p


def strip(text):
    """Source with comments, strings and char literals blanked (newlines kept)."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif c in "\"'":
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            out.append(c + " " * (j - i - 1) + c)
            i = j + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def functions(text):
    """(name, first line, line count) of each function definition at file scope."""
    s = strip(text)
    lines = s.split("\n")
    depth, start, name, found = 0, None, None, []
    head = ""
    for no, line in enumerate(lines, 1):
        if line.startswith("#"):
            continue
        for ch in line:
            if ch == "{":
                if depth == 0:
                    m = re.search(r"(\w+)\s*\([^;{}]*\)\s*(?:__attribute__\s*\(\(.*\)\)\s*)?$",
                                  head.strip())
                    if m and m.group(1) not in ("if", "for", "while", "switch"):
                        start, name = no, m.group(1)
                depth += 1
                head = ""
            elif ch == "}":
                depth -= 1
                if depth == 0 and start is not None:
                    found.append((name, start, no - start + 1))
                    start = None
                head = ""
            elif depth == 0:
                head += ch
                if ch == ";":
                    head = ""
        if depth == 0:
            head += " "
    return found


def unmapped(root):
    """Source files that docs/architecture.md's file map does not name."""
    try:
        doc = open(os.path.join(root, "docs", "architecture.md"), encoding="utf-8").read()
    except OSError:
        return ["docs/architecture.md: missing"]
    start = doc.find("## File map")
    end = doc.find("\n## ", start + 1)
    if start < 0:
        return ["docs/architecture.md: no '## File map' section"]
    fmap = doc[start:end if end > 0 else len(doc)]
    missing = []
    for rel, _ in sources(root):
        base = os.path.basename(rel)
        stem, ext = os.path.splitext(base)
        if not re.search(r"(?<![\w.])" + re.escape(base) + r"(?![\w])", fmap) and \
           not (ext in (".c", ".h") and (stem + ".h/.c") in fmap):
            missing.append(f"{rel}: not in docs/architecture.md's file map")
    return missing


def main():
    args = sys.argv[1:]
    list_n = 0
    if "--list" in args:
        k = args.index("--list")
        list_n = int(args[k + 1])
        del args[k : k + 2]
    root = args[0] if args else os.path.join(os.path.dirname(__file__), "..")
    bad, lengths = [], []
    for rel, path in sources(root):
        text = open(path, encoding="utf-8").read()
        top = rel.split("/")[0]
        for inc in re.findall(r'^\s*#\s*include\s*[<"]([^>"]+)[>"]', text, re.M):
            if inc in ONLY_INCLUDER and ONLY_INCLUDER[inc] != rel:
                bad.append(f"{rel}: includes {inc} (only {ONLY_INCLUDER[inc]} may)")
            folder = inc.split("/")[0]
            if "/" in inc and folder in LAYERS and folder != top and folder not in LAYERS[top]:
                bad.append(f"{rel}: includes {inc}: {top}/ may not use {folder}/")
        for name, line, count in functions(text):
            lengths.append((count, f"{rel}:{line}", name))
            if count > MAX_FUNC:
                bad.append(f"{rel}:{line}: {name}() is {count} lines (limit {MAX_FUNC})")
        if rel in CORE_FILES:
            n = text.count("\n")
            if n >= MAX_CORE:
                bad.append(f"{rel}: {n} lines (limit {MAX_CORE})")
    bad += unmapped(root)
    for count, where, name in sorted(lengths, reverse=True)[:list_n]:
        print(f"{count:5d}  {where}  {name}")
    for b in bad:
        print(b)
    if not list_n:
        print(f"check-layout: {len(bad)} breach(es)" if bad else "check-layout: all rules hold")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
