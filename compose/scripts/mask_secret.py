"""Copy standard input to standard output with the value of KIT_API_KEY masked (`***`), line
by line. The SGLang scripts pass their output through it when a key is set: SGLang logs its
arguments, the key among them, when it starts. With a folder argument (the private folder
holding the key's config file) the folder is removed once SGLang has logged its arguments
(it has read the file by then), and at the end in any case."""

from __future__ import annotations

import json
import os
import shutil
import sys

KEY = os.environ.pop("KIT_API_KEY", "")
# The key as it is, and as a log line may quote it (repr, JSON).
FORMS = sorted({f.encode() for f in (KEY, repr(KEY)[1:-1], json.dumps(KEY)[1:-1]) if f}, key=len, reverse=True)
FOLDER = sys.argv[1] if len(sys.argv) > 1 else ""


def main() -> int:
    out = sys.stdout.buffer
    try:
        for line in sys.stdin.buffer:
            if any(form in line for form in FORMS):
                for form in FORMS:
                    line = line.replace(form, b"***")
                if FOLDER:
                    shutil.rmtree(FOLDER, ignore_errors=True)
            out.write(line)
            out.flush()
    finally:
        if FOLDER:
            shutil.rmtree(FOLDER, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
