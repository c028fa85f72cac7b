#!/usr/bin/env bash
# Start an SSH server for `ray up cluster/local.yaml`: it listens on 127.0.0.1 only and
# accepts one throw-away key, both made here. Needs Debian's openssh-server and rsync.
#
#   cluster/local_sshd.sh start    # prints nothing on success; the key is $DIR/client_key
#   cluster/local_sshd.sh stop     # stops it (by the PID in $DIR/sshd.pid), forgets the key,
#                                  # removes $DIR
#
# It also links $DIR/ray to the `ray` of the Python that runs this project, and gives the SSH
# sessions a throw-away home ($DIR/home) whose .bashrc puts $DIR first on the PATH: Ray's
# launcher sources ~/.bashrc before each command it runs over SSH, so a bare `ray` (the
# `ray stop` of `ray down`) finds this project's Ray even in a virtualenv, and your own home
# is left untouched. $DIR/home/.ray links to ~/.ray, where the auth token is.
set -euo pipefail
DIR=${UCRN_SSH_DIR:-/tmp/ucrn-ssh}
PYTHON=${PYTHON:-python}

start() {
    mkdir -p "$DIR" /run/sshd
    chmod 700 "$DIR"
    [ -f "$DIR/host_key" ] || ssh-keygen -q -t ed25519 -N "" -f "$DIR/host_key"
    [ -f "$DIR/client_key" ] || ssh-keygen -q -t ed25519 -N "" -C ucrn-local -f "$DIR/client_key"
    mkdir -p ~/.ssh && chmod 700 ~/.ssh && touch ~/.ssh/authorized_keys
    grep -qF "$(cat "$DIR/client_key.pub")" ~/.ssh/authorized_keys ||
        cat "$DIR/client_key.pub" >> ~/.ssh/authorized_keys
    ln -sf "$(dirname "$("$PYTHON" -c 'import sys; print(sys.executable)')")/ray" "$DIR/ray"
    mkdir -p "$DIR/home" ~/.ray
    ln -sfn ~/.ray "$DIR/home/.ray"
    echo "export PATH=$DIR:\$PATH" > "$DIR/home/.bashrc"
    cat > "$DIR/sshd_config" <<CONFIG
ListenAddress 127.0.0.1
Port 22
HostKey $DIR/host_key
PidFile $DIR/sshd.pid
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
AuthorizedKeysFile .ssh/authorized_keys
StrictModes no
UsePAM no
Subsystem sftp internal-sftp
SetEnv HOME=$DIR/home
CONFIG
    if [ -f "$DIR/sshd.pid" ] && kill -0 "$(cat "$DIR/sshd.pid")" 2>/dev/null; then
        return 0
    fi
    "$(command -v sshd || echo /usr/sbin/sshd)" -f "$DIR/sshd_config"
}

stop() {
    if [ -f "$DIR/sshd.pid" ]; then
        kill "$(cat "$DIR/sshd.pid")" 2>/dev/null || true
        rm -f "$DIR/sshd.pid"
    fi
    if [ -f "$DIR/client_key.pub" ] && [ -f ~/.ssh/authorized_keys ]; then
        grep -vF "$(cat "$DIR/client_key.pub")" ~/.ssh/authorized_keys > "$DIR/keys" || true
        cat "$DIR/keys" > ~/.ssh/authorized_keys
    fi
    rm -rf "$DIR"  # keys, home and link: nothing of it outlives the server
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
