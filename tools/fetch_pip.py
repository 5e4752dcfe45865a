"""Download the newest pip wheel from the Python Package Index, checking its sha256.

Used by tools/bootstrap.sh only where the interpreter has no ``ensurepip`` (Debian's python3
without the python3-venv package): the virtual environment is created without pip and pip is
run from this wheel to install itself. Standard library only.

    python tools/fetch_pip.py FOLDER     # prints the path of the wheel written there

The wheel keeps its published file name: pip installs a wheel only under a valid wheel name.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import urllib.parse
import urllib.request

INDEX = "https://pypi.org/pypi/pip/json"


def main(folder: str) -> int:
    try:
        with urllib.request.urlopen(INDEX, timeout=60) as response:
            meta = json.load(response)
        wheels = [f for f in meta["urls"] if f["packagetype"] == "bdist_wheel"]
        if not wheels:
            print("fetch_pip: the index lists no pip wheel", file=sys.stderr)
            return 1
        wheel = wheels[0]
        # Mirrors of the index may give the file's address relative to the index page.
        url = urllib.parse.urljoin(INDEX, wheel["url"])
        with urllib.request.urlopen(url, timeout=120) as response:
            data = response.read()
    except (OSError, ValueError, KeyError) as exc:   # offline, HTTP error, unexpected reply
        print(f"fetch_pip: cannot fetch pip from {INDEX}: {exc}", file=sys.stderr)
        return 1
    if hashlib.sha256(data).hexdigest() != wheel["digests"]["sha256"]:
        print("fetch_pip: sha256 mismatch for " + wheel["filename"], file=sys.stderr)
        return 1
    out = os.path.join(folder, os.path.basename(wheel["filename"]))
    with open(out, "wb") as f:
        f.write(data)
    print(out)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1]))
