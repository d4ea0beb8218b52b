# shellcheck shell=bash
# Shared by the scripts that count a mirrored pair's work per write (sourced, not run):
# benches/mirror_instructions.sh and benches/mirror_cpu_split.sh. `site_cfg` writes
# "$WORK/<name>.toml" for a site of a pair on loopback (one reactor on core 0, wait interrupt,
# a 1 GiB RAM volume, mirrored); `key_line` finds the [mirror] key line a binary takes. Needs
# WORK and SCRIPT (for messages).

site_cfg() { # name peer nbd_port repl_port peer_repl_port key_line
    cat >"$WORK/$1.toml" <<CFG
[reactor]
cores = [0]
wait = "interrupt"
[nbd]
listen = ["127.0.0.1:$3"]
[nvmf]
listen = []
[control]
socket = "$WORK/$1.sock"
[mirror]
site = "$1"
peer_site = "$2"
listen = ["127.0.0.1:$4"]
peer = "127.0.0.1:$5"
$6
[[volume]]
name = "vol0"
backend = "malloc"
size = "1GiB"
mirror = true
CFG
}

# The [mirror] key line BIN takes: none, or the link key (a tree since link authentication).
key_line() {
    local line
    for line in "" "witness_key_file = \"$WORK/link.key\""; do
        site_cfg a b 1 2 3 "$line"
        if "$1" check-config "$WORK/a.toml" >/dev/null 2>&1; then
            echo "$line"
            return 0
        fi
    done
    echo "$SCRIPT: $1 check-config rejects the site config" >&2
    exit 1
}
