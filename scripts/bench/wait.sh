# Sourced by the benchmark scripts: waiting for a server to come up.
# wait_for LOG TEXT: until TEXT appears in LOG (20 s; prints the log if it never does).
wait_for() { for _ in $(seq 1 100); do grep -q "$2" "$1" && return 0; sleep 0.2; done; cat "$1"; return 1; }
# wait_port PORT: until 127.0.0.1:PORT accepts a connection (20 s).
wait_port() { for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.2; done; return 1; }
