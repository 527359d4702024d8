"""One compile of //:jax_flash3_cuda that tells Bazel which declared headers it did not read.

usage: compile.py HEADERS UNUSED DEPFILE -- COMPILER ARG...

Runs COMPILER ARG... -MD -MF DEPFILE, then writes to UNUSED the lines of HEADERS (the declared
header inputs, one per line) that DEPFILE does not name. Bazel (unused_inputs_list) then ignores
edits to those, so editing one kernel's header recompiles only the files that include it, as
CMake's depfiles do.
"""

import os
import subprocess
import sys


def main(argv: list[str]) -> int:
    headers, unused, depfile, sep, *cmd = argv[1:]
    if sep != "--" or not cmd:
        print(__doc__, file=sys.stderr)
        return 2
    rc = subprocess.call([*cmd, "-MD", "-MF", depfile])
    if rc != 0:
        return rc
    with open(depfile) as f:
        tokens = f.read().replace("\\\n", " ").split()
    used = {os.path.normpath(t) for t in tokens if not t.endswith(":")}
    with open(headers) as f, open(unused, "w") as out:
        for line in f:
            path = line.rstrip("\n")
            if path and os.path.normpath(path) not in used:
                out.write(path + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
