"""Several daemons as one service over Redis (`[cluster] redis`): room directory and load (directory.py),
code frames between daemons (bridge.py), rooms that span daemons (rooms.py), the nginx in front (nginx.py)."""
