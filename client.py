"""Run the client: `python client.py [FLAGS]` == `xcodec-stream client [FLAGS]`."""

import sys

from xcodec_stream.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["client", *sys.argv[1:]]))
