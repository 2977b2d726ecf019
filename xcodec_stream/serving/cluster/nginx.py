"""The nginx configuration in front of a cluster (configs/cluster/nginx.conf is this, rendered for three daemons
on one machine; the tests render it for theirs). docs/DEPLOY.md explains it line by line.

Routing: new connections go to the daemon with the fewest connections (`least_conn`); a daemon that is down
or draining (connection refused) or full (it answers the upgrade with 503, see BALANCER_HEADER in
serving/server.py) is skipped for the next one. `?node=NAME` goes to that daemon only: a client resuming a
session reconnects with the `node` of its `ready` message, since the session lives in that daemon's memory.
"""

from __future__ import annotations

import re

HEADER = "X-Xcodec-Balancer"  # (the server's BALANCER_HEADER)


def _upstream_name(node: str) -> str:
    return "xcodec_node_" + re.sub(r"[^A-Za-z0-9_]", "_", node)


def render_nginx_conf(
    daemons: dict[str, str],
    *,
    listen: str = "127.0.0.1:8800",
    prefix: str | None = None,
    user: str | None = None,
    fail_timeout_s: int = 5,
) -> str:
    """nginx.conf for `daemons` ({node name: "host:port"}). `prefix`: a directory for nginx's pid, logs and
    temp files (tests run it unprivileged-style under a temp dir); None leaves the system defaults."""
    if not daemons:
        raise ValueError("at least one daemon")
    for node in daemons:
        if not re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", node):
            raise ValueError(f"bad node name {node!r}")
    lines = ["# xcodec-stream: nginx in front of the daemons of one cluster (docs/DEPLOY.md).", ""]
    if user:
        lines.append(f"user {user};")
    lines += ["worker_processes 1;"]
    if prefix:
        lines += [f"pid {prefix}/nginx.pid;", f"error_log {prefix}/error.log warn;"]
    lines += ["", "events {", "    worker_connections 4096;", "}", "", "http {"]
    if prefix:
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            lines.append(f"    {kind}_temp_path {prefix}/{kind}_temp;")
    lines += [
        "    # no query strings in the log: ?token= may carry a secret",
        '    log_format xcodec \'$remote_addr [$time_local] "$request_method $uri" $status '
        "$upstream_addr $request_time';",
        f"    access_log {prefix}/access.log xcodec;"
        if prefix
        else "    access_log /var/log/nginx/xcodec.log xcodec;",
        "",
        "    map $http_upgrade $connection_upgrade {",
        "        default upgrade;",
        "        ''      close;",
        "    }",
        "",
        "    # ?node=NAME reaches that daemon (a resume: its session lives there); anything else the pool",
        "    map $arg_node $xcodec_upstream {",
        "        default xcodec_pool;",
    ]
    lines += [f"        {node} {_upstream_name(node)};" for node in daemons]
    lines += [
        "    }",
        "",
        "    upstream xcodec_pool {",
        "        least_conn;  # long-lived WebSockets: balance open connections, not requests",
    ]
    lines += [
        f"        server {addr} max_fails=1 fail_timeout={fail_timeout_s}s;" for addr in daemons.values()
    ]
    lines.append("    }")
    for node, addr in daemons.items():
        lines += [f"    upstream {_upstream_name(node)} {{", f"        server {addr};", "    }"]
    lines += [
        "",
        "    server {",
        f"        listen {listen};",
        "",
        "        location / {",
        "            proxy_pass http://$xcodec_upstream;",
        "            proxy_http_version 1.1;",
        "            proxy_set_header Upgrade $http_upgrade;",
        "            proxy_set_header Connection $connection_upgrade;",
        "            proxy_set_header Host $host;",
        "            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        f"            proxy_set_header {HEADER} nginx;  # a full daemon answers 503 instead of server_full",
        "            # refused (down, draining) or full (503): try the next daemon; /healthz of a daemon",
        "            # that is gone: another one answers with the same cluster view",
        "            proxy_next_upstream error timeout http_502 http_503;",
        "            proxy_next_upstream_tries 0;",
        "            proxy_connect_timeout 2s;",
        "            # a listener may receive for hours without sending: the daemons ping every 20 s",
        "            proxy_read_timeout 1h;",
        "            proxy_send_timeout 1h;",
        "            proxy_buffering off;",
        "        }",
        "    }",
        "}",
        "",
    ]
    return "\n".join(lines)


def example() -> str:
    """configs/cluster/nginx.conf: three daemons on this machine (ports 8801-8803), nginx on 8800."""
    return render_nginx_conf({f"d{i}": f"127.0.0.1:{8800 + i}" for i in (1, 2, 3)})


if __name__ == "__main__":
    print(example(), end="")
