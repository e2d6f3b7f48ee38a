#!/usr/bin/env bash
# Install QuantShift onto this host from a checkout, as root. Idempotent: re-running
# upgrades the venv in place and never overwrites an operator's config or env files.
#
#   sudo scripts/install.sh                  # both bots
#   sudo scripts/install.sh --bots equity    # one bot
#   scripts/install.sh --dry-run             # show what it would do, change nothing
#
# Then: edit /etc/quantshift/<bot>.env and `systemctl enable --now quantshift-<bot>`.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/install.sh [--dry-run] [--prefix DIR] [--bots "equity crypto"] [--skip-venv]

Install QuantShift from this checkout (run as root; idempotent):
  - system user/group 'quantshift' (no login shell, no home), if absent
  - venv /opt/quantshift/venv with this checkout pip-installed (upgraded on re-run)
  - config/*.toml -> /etc/quantshift/ (only files not already there)
  - .env.example -> /etc/quantshift/<bot>.env, mode 0600 root:quantshift (only if absent)
  - systemd/quantshift-<bot>.service -> /etc/systemd/system/, then systemctl daemon-reload
    (when systemd is running)

Options:
  --dry-run       print every action it would take ("would: ...") and change nothing
  --prefix DIR    install under DIR instead of / (no user creation, no chown, no systemctl)
  --bots LIST     space-separated bots to install (default: "equity crypto")
  --skip-venv     do not create the venv or pip install (config and units only)
  -h, --help      show this help

Environment: PYTHON=/path/to/python3.11 picks the interpreter for the venv.
EOF
}

die() {
    printf 'install.sh: %s\n' "$*" >&2
    exit 1
}

DRY_RUN=0
SKIP_VENV=0
PREFIX=/
BOTS="equity crypto"

while (($#)); do
    case $1 in
        --dry-run) DRY_RUN=1 ;;
        --skip-venv) SKIP_VENV=1 ;;
        --prefix)
            (($# >= 2)) || die "--prefix needs a directory"
            PREFIX=$2
            shift
            ;;
        --prefix=*) PREFIX=${1#--prefix=} ;;
        --bots)
            (($# >= 2)) || die "--bots needs a list, e.g. --bots \"equity crypto\""
            BOTS=$2
            shift
            ;;
        --bots=*) BOTS=${1#--bots=} ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            usage >&2
            die "unknown argument: $1"
            ;;
    esac
    shift
done

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[[ -f $SRC/pyproject.toml ]] || die "not a QuantShift checkout: $SRC"
[[ -n $PREFIX ]] || die "--prefix must not be empty"
[[ $PREFIX == /* ]] || PREFIX=$PWD/$PREFIX
ROOT=$PREFIX             # without trailing slashes: "" for /, so "$ROOT/etc" is clean
while [[ $ROOT == */ ]]; do ROOT=${ROOT%/}; done
UNDER_PREFIX=0
[[ -n $ROOT ]] && UNDER_PREFIX=1

read -r -a BOT_LIST <<<"$BOTS"
((${#BOT_LIST[@]})) || die "--bots is empty"
for bot in "${BOT_LIST[@]}"; do
    [[ $bot =~ ^[a-z0-9][a-z0-9_-]*$ ]] || die "bad bot name: $bot"
    [[ -f $SRC/systemd/quantshift-$bot.service ]] \
        || die "no unit for bot '$bot': $SRC/systemd/quantshift-$bot.service"
done
[[ -f $SRC/.env.example ]] || die "no .env.example in $SRC"

if ((!DRY_RUN && !UNDER_PREFIX && EUID != 0)); then
    die "run as root (or use --dry-run, or --prefix DIR to stage into a directory)"
fi

ETC=$ROOT/etc/quantshift
UNIT_DIR=$ROOT/etc/systemd/system
VENV=$ROOT/opt/quantshift/venv
CHANGED=0

say() { printf '%s\n' "$*"; }

# act DESCRIPTION CMD ARGS...: run the command, or only describe it under --dry-run.
act() {
    local desc=$1
    shift
    if ((DRY_RUN)); then
        say "would: $desc"
    else
        say "$desc"
        "$@"
        CHANGED=1
    fi
}

# Owner options for install(1): root:quantshift on a real host, the caller's under a prefix.
owner_opts() {
    if ((UNDER_PREFIX)); then
        return 0
    fi
    printf '%s\n' -o root -g quantshift
}
mapfile -t OWNER < <(owner_opts)

mode=""
((DRY_RUN)) && mode=" [dry run: nothing will be changed]"
say "QuantShift install from $SRC into $PREFIX (bots: ${BOT_LIST[*]})$mode"

# 1. System user and group.
if ((UNDER_PREFIX)); then
    say "skip: user/group quantshift (not created under --prefix $PREFIX)"
else
    if getent group quantshift >/dev/null; then
        say "ok: group quantshift exists"
    else
        act "create system group quantshift" groupadd --system quantshift
    fi
    if getent passwd quantshift >/dev/null; then
        say "ok: user quantshift exists"
    else
        nologin=$(command -v nologin || true)
        for cand in /usr/sbin/nologin /sbin/nologin /bin/false; do
            [[ -n $nologin ]] && break
            [[ -x $cand ]] && nologin=$cand
        done
        act "create system user quantshift (shell $nologin, no home)" \
            useradd --system --gid quantshift --no-create-home --home-dir /nonexistent \
            --shell "$nologin" --comment "QuantShift trading daemon" quantshift
    fi
fi

# 2. Virtualenv with this checkout installed.
# The venv links to its base interpreter, which the service (User=quantshift,
# ProtectHome=yes) must be able to run: prefer system interpreters over e.g. pyenv shims.
find_python() {
    local cand
    for cand in "${PYTHON:-}" /usr/bin/python3.11 /usr/local/bin/python3.11 python3.11 \
        /usr/bin/python3 /usr/local/bin/python3 python3; do
        [[ -n $cand ]] || continue
        cand=$(command -v "$cand" 2>/dev/null) || continue
        if "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
            && "$cand" -c 'import ensurepip, venv' 2>/dev/null; then
            printf '%s\n' "$cand"
            return 0
        fi
    done
    return 1
}

# Build from a clean copy: no build/ or egg-info left in the checkout, and no stale
# modules from an old build/lib end up in the installed package.
pip_install() {
    local stage
    stage=$(mktemp -d)
    tar -C "$SRC" --exclude-vcs --exclude=./.venv --exclude=./build --exclude='*.egg-info' \
        --exclude=__pycache__ --exclude=.pytest_cache --exclude=.ruff_cache \
        --exclude=.hypothesis --exclude=./.env -cf - . | tar -C "$stage" -xf -
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade "$stage" \
        || { rm -rf "$stage"; return 1; }
    rm -rf "$stage"
}

if ((SKIP_VENV)); then
    say "skip: venv and pip install (--skip-venv)"
else
    if [[ -x $VENV/bin/python ]]; then
        say "ok: venv $VENV exists (upgrading in place)"
    else
        py=$(find_python) \
            || die "need python3.11 or python3 >= 3.11 with venv/ensurepip (or set PYTHON=...)"
        base=$("$py" -c 'import os, sys
print(os.path.realpath(getattr(sys, "_base_executable", sys.executable)))')
        case $base in
            /root/* | /home/* | /run/user/*)
                msg="$base is under a home directory, which the service cannot see (ProtectHome=yes)"
                if ((DRY_RUN || UNDER_PREFIX)); then
                    say "warning: $msg"
                else
                    die "$msg; set PYTHON=/usr/bin/python3.11 (or another system interpreter)"
                fi
                ;;
        esac
        act "create venv $VENV with $py" "$py" -m venv "$VENV"
    fi
    act "pip install $SRC into $VENV (upgrade in place)" pip_install
fi

# 3. Configuration directory, TOML configs and per-bot env files.
if [[ -d $ETC ]]; then
    say "ok: $ETC exists"
else
    act "create $ETC (mode 0750)" install -d -m 0750 "${OWNER[@]}" "$ETC"
fi

shopt -s nullglob
tomls=("$SRC"/config/*.toml)
shopt -u nullglob
if ((${#tomls[@]} == 0)); then
    say "skip: no config/*.toml in the checkout"
fi
for toml in "${tomls[@]}"; do
    dest=$ETC/$(basename "$toml")
    if [[ -e $dest || -L $dest ]]; then
        say "keep: $dest (already present, not overwritten)"
    else
        act "install $dest (mode 0640)" install -m 0640 "${OWNER[@]}" "$toml" "$dest"
    fi
done

for bot in "${BOT_LIST[@]}"; do
    dest=$ETC/$bot.env
    if [[ -e $dest || -L $dest ]]; then
        say "keep: $dest (already present, not overwritten)"
    else
        act "create $dest from .env.example (mode 0600${OWNER:+, root:quantshift})" \
            install -m 0600 "${OWNER[@]}" "$SRC/.env.example" "$dest"
    fi
done

# 4. systemd units.
if [[ ! -d $UNIT_DIR ]]; then
    act "create $UNIT_DIR" install -d -m 0755 "$UNIT_DIR"
fi
units_changed=0
for bot in "${BOT_LIST[@]}"; do
    unit=$SRC/systemd/quantshift-$bot.service
    dest=$UNIT_DIR/quantshift-$bot.service
    if [[ -f $dest ]] && cmp -s "$unit" "$dest"; then
        say "ok: $dest is up to date"
    else
        act "install $dest" install -m 0644 "$unit" "$dest"
        units_changed=1
    fi
done

if ((UNDER_PREFIX)); then
    say "skip: systemctl daemon-reload (installing under --prefix $PREFIX)"
elif ! command -v systemctl >/dev/null || [[ ! -d /run/systemd/system ]]; then
    say "skip: systemctl daemon-reload (systemd is not running on this host)"
elif ((units_changed)); then
    act "systemctl daemon-reload" systemctl daemon-reload
else
    say "ok: units unchanged, no daemon-reload needed"
fi

if ((DRY_RUN)); then
    say "dry run: nothing was changed"
else
    ((CHANGED)) && say "done." || say "done: nothing to change."
    say "next: edit $ETC/<bot>.env, then: systemctl enable --now quantshift-<bot>"
    say "      (after later edits: systemctl restart quantshift-<bot>)"
fi
