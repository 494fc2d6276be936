#!/bin/sh
# tools/check_python_access.sh PYTHON: whether a user other than root and the owner (the daemon's
# recmgd) can run PYTHON, judged from permission bits alone (no runuser, no such user needed: `make
# install DESTDIR=...` runs it on the venv it builds, $(DESTDIR)$(PREFIX)/lib/recmgd/venv/bin/python).
#
# PYTHON's venv (the folder above its bin, under DESTDIR) is the installer's and is not checked. From
# there on, every symbolic link is followed to the real interpreter: every directory on the way to each
# link's target and to the interpreter (as written, and with symbolic links resolved) must be searchable
# by others (o+x), and the interpreter executable by others; likewise the directory named by `home` in
# the venv's pyvenv.cfg (where the interpreter finds its standard library).
#
# Exit 0 when it is; otherwise 1 and one line on stdout naming the directory (or file) that is not,
# e.g. "its Python, /root/.pyenv/versions/3.11.7/bin/python3.11, is under /root (mode 0700), which
# other users cannot enter". 2 on a usage error.
set -u

if [ $# -ne 1 ] || [ -z "$1" ]; then
    echo "usage: $0 PYTHON" >&2
    exit 2
fi
py=$1
case $py in /*) ;; *) py=$(pwd)/$py ;; esac
if [ ! -e "$py" ]; then
    echo "$py does not exist"
    exit 1
fi
# the installer's own tree: the venv (PYTHON's folder's parent, with a pyvenv.cfg); none for a plain
# interpreter, all of whose path is checked
own=$(dirname "$(dirname "$py")")
[ -f "$own/pyvenv.cfg" ] || own=""
real=$(readlink -f "$py") || { echo "cannot resolve $py"; exit 1; }

# top_unsearchable DIR: true, with bad=the top-most directory from / down to DIR that others cannot
# search (o+x; symbolic links on the way followed by stat -L). Nothing is checked in the venv (DIR under
# it), whose folders, and those above it in DESTDIR, are the installer's.
bad=""
top_unsearchable() {
    bad=""
    d=$1
    if [ -n "$own" ]; then
        case $d in "$own"|"$own"/*) return 1 ;; esac
    fi
    while :; do
        if [ -e "$d" ]; then
            m=$(stat -L -c %A "$d") || m=""
            case $m in *x|*t) ;; *) bad=$d ;; esac
        fi
        if [ "$d" = / ] || [ "$d" = . ]; then break; fi
        d=$(dirname "$d")
    done
    [ -n "$bad" ]
}

# unsearchable_dir DIR: top_unsearchable on DIR as written, then on DIR with its links resolved
unsearchable_dir() {
    top_unsearchable "$1" && return 0
    [ -e "$1" ] && top_unsearchable "$(readlink -f "$1")"
}

# say WHAT PATH: the refusal line for PATH, WHAT its role; exits
refuse_under() {
    echo "$1, $2, is under $bad (mode $(stat -L -c %04a "$bad")), which other users cannot enter"
    exit 1
}

# the chain of symbolic links from PYTHON to the interpreter: the folders on the way to each target
p=$py
n=0
while [ -L "$p" ]; do
    t=$(readlink "$p")
    case $t in /*) p=$t ;; *) p=$(dirname "$p")/$t ;; esac
    n=$((n + 1))
    if [ $n -gt 40 ]; then
        echo "$py: too many levels of symbolic links"
        exit 1
    fi
    if unsearchable_dir "$(dirname "$p")"; then
        if [ "$p" = "$real" ]; then refuse_under "its Python" "$real"; fi
        refuse_under "its Python" "$p (a link to $real)"
    fi
done
# the interpreter itself, by its real path
if unsearchable_dir "$(dirname "$real")"; then refuse_under "its Python" "$real"; fi
case $(stat -c %A "$real") in *x|*t) ;; *)
    echo "its Python, $real, is not executable by other users (mode $(stat -c %04a "$real"))"
    exit 1
esac
# the venv's home (pyvenv.cfg): the base interpreter's folder, where it finds its standard library
cfg=$own/pyvenv.cfg
if [ -n "$own" ]; then
    home=$(sed -n 's/^home[[:space:]]*=[[:space:]]*//p' "$cfg" | head -n 1)
    if [ -n "$home" ]; then
        if unsearchable_dir "$home"; then refuse_under "its Python's home (pyvenv.cfg)" "$home"; fi
    fi
fi
exit 0
