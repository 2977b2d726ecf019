"""Run the daemon: `python server.py [FLAGS]` == `xcodec-stream serve [FLAGS]`."""

import sys

from xcodec_stream.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
