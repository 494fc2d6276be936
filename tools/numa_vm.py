"""The NUMA test VM: a QEMU guest with a CPU-less memory node, to test what this host cannot.

The guest has two NUMA nodes, node 0 (both CPUs, 1 GiB) and node 1 (memory only, 1 GiB, distance
20), as a machine with a CXL or PMEM slow tier has. It boots a stock Debian kernel under software
emulation (TCG) and sees the host's root file system read-only over 9p, under a tmpfs overlay, so it
runs this checkout and its virtual environment at the same paths as the host. Two ways to run:

- ``run_command``: a command under the initramfs's own init (PID 1 is a busybox shell script);
- ``run_systemd``: systemd as PID 1 (switch_root into the overlay) starts one oneshot test unit,
  which runs the command and powers the guest off.

Either way the command's output and exit status come back over the serial console. What the guest
needs is prepared once and cached under ``build/vm/`` of this checkout: the kernel (``vmlinuz`` and
the few modules the initramfs loads, from the linux-image package that ``apt-cache depends
linux-image-amd64`` names) and a busybox-static initramfs built here.

CLI (run as root, as the guest runs its commands)::

    python tools/numa_vm.py prepare                        # fetch the kernel, build the initramfs
    python tools/numa_vm.py run -- cat /sys/devices/system/node/node1/meminfo
    python tools/numa_vm.py systemd -- systemctl is-system-running

Needs qemu-system-x86_64 and busybox-static (``make sysdeps`` installs them) and apt (the kernel).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import logging
import lzma
import os
import re
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("recmg.numa_vm")

# --------------------------------------------------------------------------------------------------
# Every path, boot flag and timeout of the VM, in one place.

REPO = Path(__file__).resolve().parent.parent  # the checkout this tool lives in
CACHE_DIR = REPO / "build" / "vm"
QEMU = "qemu-system-x86_64"
BUSYBOX = Path("/bin/busybox")  # from busybox-static: the initramfs needs a static binary
KERNEL_META_PACKAGE = "linux-image-amd64"
# The modules the initramfs loads, in this order (9p over virtio for the host root, then overlayfs).
MODULES = (
    "netfs", "fscache", "9pnet", "9p", "virtio_ring", "virtio", "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev", "virtio_pci", "9pnet_virtio", "overlay",
)
NODE_MEM = ("1G", "1G")  # node 0 (CPUs 0-1), node 1 (no CPUs)
NODE_DISTANCE = 20
MACHINE_ARGS = (
    "-accel", "tcg,thread=multi",  # the host's /dev/kvm cannot run a stock kernel: software emulation
    "-cpu", "max",
    "-machine", "q35",
    "-smp", "2",
    "-m", "2G",
    "-object", f"memory-backend-ram,id=m0,size={NODE_MEM[0]}",
    "-numa", "node,nodeid=0,cpus=0-1,memdev=m0",
    "-object", f"memory-backend-ram,id=m1,size={NODE_MEM[1]}",
    "-numa", "node,nodeid=1,memdev=m1",
    "-numa", f"dist,src=0,dst=1,val={NODE_DISTANCE}",
    "-nodefaults", "-no-reboot", "-display", "none", "-monitor", "none", "-serial", "stdio",
    "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
)
HOST_MOUNT_OPTS = "trans=virtio,version=9p2000.L,cache=loose,msize=512000,ro"
KERNEL_ARGS = ("console=ttyS0", "quiet", "loglevel=3", "panic=-1", "rdinit=/init")
# systemd as PID 1: no boot status lines, and /tmp is neither emptied nor covered at boot (the checkout
# or test files may be there).
SYSTEMD_ARGS = (
    "systemd.show_status=false",
    "systemd.mask=tmp.mount",
    "systemd.mask=systemd-tmpfiles-setup.service",
    "systemd.mask=systemd-tmpfiles-clean.timer",
)
SYSTEMD = "/lib/systemd/systemd"
GUEST_DIR = "/recmg-vm"  # in the guest: the run script (not under /tmp or /run, which systemd mounts over)
TEST_UNIT = "recmg-vm-test.service"
GUEST_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "PYTHONDONTWRITEBYTECODE": "1",  # the host root is read-only: no .pyc into the overlay
}

# Timeouts, seconds.
APT_TIMEOUT = 600.0  # apt-cache, apt-get update, apt-get download (70 MB)
EXTRACT_TIMEOUT = 120.0
DEFAULT_TIMEOUT = 300.0  # one guest run, from the start of qemu to its end
QEMU_EXIT_TIMEOUT = 10.0  # after a timeout: the wait for the killed qemu

BEGIN_MARK = "@@recmg-vm-begin@@"
EXIT_RE = re.compile(r"@@recmg-vm-exit=(\d+)@@")
ERROR_RE = re.compile(r"@@recmg-vm-error=(.*?)@@")


class VMError(RuntimeError):
    """The guest could not be run, or gave no exit status; the message is one line."""


class VMUnavailable(VMError):
    """What the guest needs is missing here (qemu, busybox-static, the kernel package)."""


class VMTimeout(VMError):
    """The guest did not power off in time."""


@dataclass(frozen=True)
class File:
    """A file to put in the guest's root (over the host's, in the overlay)."""

    content: str | bytes
    mode: int = 0o644


@dataclass(frozen=True)
class Link:
    """A symbolic link to put in the guest's root."""

    target: str


GuestFiles = Mapping[str, str | bytes | File | Link]  # guest path -> content, File or Link


@dataclass(frozen=True)
class GuestResult:
    """A command's exit status and output in the guest; ``console`` is the whole serial log."""

    returncode: int
    output: str
    console: str
    seconds: float
    log_path: Path


# --------------------------------------------------------------------------------------------------
# The kernel


@dataclass(frozen=True)
class Kernel:
    """A kernel and the modules the initramfs loads (``MODULES``, in that order). ``image`` is what
    qemu boots: the uncompressed ELF ``vmlinux`` when it has a PVH entry point (qemu then starts it
    directly, which saves the 7 to 8 s that decompressing ``vmlinuz`` takes under TCG), else vmlinuz."""

    version: str
    vmlinuz: Path
    image: Path
    modules: tuple[Path, ...]


def _run(argv: Sequence[str], timeout: float, what: str, cwd: Path | None = None) -> str:
    """Run a host command for the preparation; any failure is a one-line VMUnavailable."""
    try:
        r = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False,
                           cwd=cwd)
    except FileNotFoundError:
        raise VMUnavailable(f"{what}: {argv[0]} not found") from None
    except subprocess.TimeoutExpired:
        raise VMUnavailable(f"{what}: {' '.join(argv)} took more than {timeout:.0f} s") from None
    if r.returncode != 0:
        err = " ".join((r.stderr or r.stdout).split())[:300]
        raise VMUnavailable(f"{what}: {' '.join(argv)} failed (exit {r.returncode}): {err}")
    return r.stdout


def kernel_package() -> str:
    """The linux-image package that ``linux-image-amd64`` depends on (apt's current kernel)."""

    def lookup() -> str | None:
        out = _run(["apt-cache", "depends", KERNEL_META_PACKAGE], APT_TIMEOUT, "finding the kernel package")
        m = re.search(r"Depends:\s*(linux-image-[0-9][\w.+-]*-amd64)\b", out)
        return m.group(1) if m else None

    try:
        name = lookup()
    except VMUnavailable:
        name = None
    if name is None and os.geteuid() == 0:
        log.info("apt does not know %s: running apt-get update", KERNEL_META_PACKAGE)
        _run(["apt-get", "update", "-qq"], APT_TIMEOUT, "apt-get update")
        name = lookup()
    if name is None:
        raise VMUnavailable(f"the kernel download failed: apt-cache depends {KERNEL_META_PACKAGE} names no "
                            "linux-image package (run apt-get update)")
    return name


def _kernel_in(root: Path) -> Kernel | None:
    """The kernel extracted under root, if it is complete."""
    vmlinuz = next(iter(sorted(root.glob("boot/vmlinuz-*"))), None)
    if vmlinuz is None:
        return None
    version = vmlinuz.name.removeprefix("vmlinuz-")
    mods = []
    for m in MODULES:
        found = sorted((root / "lib" / "modules" / version).rglob(f"{m}.ko"))
        if not found:
            return None
        mods.append(found[0])
    vmlinux = root / "boot" / f"vmlinux-{version}"
    return Kernel(version, vmlinuz, vmlinux if vmlinux.is_file() else vmlinuz, tuple(mods))


XEN_ELFNOTE_PHYS32_ENTRY = 18  # the PVH entry point: qemu boots such an ELF kernel without a decompressor


def _elf_has_pvh_note(elf: bytes) -> bool:
    """Whether a 64-bit little-endian ELF has a Xen PHYS32_ENTRY note (a PVH entry point)."""
    if elf[:6] != b"\x7fELF\x02\x01":
        return False
    (phoff,) = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        p_type, _, p_offset, _, _, p_filesz = struct.unpack_from("<IIQQQQ", elf, phoff + i * phentsize)
        if p_type != 4:  # PT_NOTE
            continue
        pos, end = p_offset, p_offset + p_filesz
        while pos + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", elf, pos)
            name = elf[pos + 12 : pos + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and ntype == XEN_ELFNOTE_PHYS32_ENTRY:
                return True
            pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False


def _vmlinux_from_bzimage(bz: bytes) -> bytes | None:
    """The ELF kernel inside a bzImage (x86 boot protocol 2.08+: payload_offset, payload_length),
    if it is xz or gzip compressed; None otherwise."""
    if len(bz) < 0x250 or bz[0x202:0x206] != b"HdrS" or struct.unpack_from("<H", bz, 0x206)[0] < 0x208:
        return None
    setup_sects = bz[0x1F1] or 4
    offset, length = struct.unpack_from("<II", bz, 0x248)
    start = (setup_sects + 1) * 512 + offset
    payload = bz[start : start + length]
    try:
        if payload[:6] == b"\xfd7zXZ\0":
            return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(payload)
        if payload[:2] == b"\x1f\x8b":
            return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(payload)
    except (lzma.LZMAError, zlib.error) as exc:
        log.info("cannot decompress %d bytes of kernel payload: %s", len(payload), exc)
    return None


def _add_pvh_image(root: Path, version: str) -> None:
    """Write boot/vmlinux-VERSION beside vmlinuz when the kernel inside has a PVH entry point."""
    vmlinux = _vmlinux_from_bzimage((root / "boot" / f"vmlinuz-{version}").read_bytes())
    if vmlinux is None or not _elf_has_pvh_note(vmlinux):
        log.info("kernel %s: no PVH entry point; qemu boots the compressed vmlinuz (slower)", version)
        return
    (root / "boot" / f"vmlinux-{version}").write_bytes(vmlinux)


def prepare_kernel(cache_dir: Path = CACHE_DIR) -> Kernel:
    """The current Debian kernel's vmlinuz and modules: downloaded and extracted once, then cached."""
    try:
        package = kernel_package()
    except VMUnavailable:
        for old in sorted(cache_dir.glob("kernel-linux-image-*"), reverse=True):
            k = _kernel_in(old)
            if k is not None:  # apt cannot tell (no package lists): the kernel we have will do
                log.info("apt names no kernel package; using the cached %s", k.version)
                return k
        raise
    dest = cache_dir / f"kernel-{package}"
    k = _kernel_in(dest)
    if k is not None:
        return k
    cache_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".kernel-", dir=cache_dir))
    try:
        t0 = time.monotonic()
        log.info("downloading %s", package)
        _run(["apt-get", "download", package], APT_TIMEOUT, "the kernel download failed", cwd=work)
        deb = next(iter(sorted(work.glob(f"{package}_*.deb"))), None)
        if deb is None:
            raise VMUnavailable(f"the kernel download failed: apt-get download {package} left no .deb")
        version = package.removeprefix("linux-image-")
        patterns = [f"./boot/vmlinuz-{version}"]
        patterns += [f"./lib/modules/{version}/kernel/*/{m}.ko" for m in MODULES]
        root = work / "root"
        root.mkdir()
        # dpkg-deb | tar: only vmlinuz and the modules are written (about 11 MB of the 70 MB package)
        with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) as dpkg:
            tar = subprocess.run(["tar", "-x", "-C", str(root), "--wildcards", *patterns], stdin=dpkg.stdout,
                                 capture_output=True, text=True, timeout=EXTRACT_TIMEOUT, check=False)
            assert dpkg.stdout is not None and dpkg.stderr is not None
            dpkg.stdout.close()
            dpkg_err = dpkg.stderr.read().decode(errors="replace")
            dpkg_rc = dpkg.wait(timeout=EXTRACT_TIMEOUT)
        if dpkg_rc != 0 or tar.returncode != 0:
            err = " ".join((dpkg_err + tar.stderr).split())[:300]
            raise VMUnavailable(f"extracting {deb.name} failed: {err}")
        if _kernel_in(root) is None:
            raise VMUnavailable(f"{deb.name} lacks vmlinuz or one of the modules {', '.join(MODULES)}")
        _add_pvh_image(root, version)
        if _kernel_in(dest) is None:  # else another run made it meanwhile
            if dest.exists():
                shutil.rmtree(dest)
            root.rename(dest)
        for old in cache_dir.glob("kernel-linux-image-*"):
            if old != dest:  # an older kernel: apt names a newer one now
                shutil.rmtree(old, ignore_errors=True)
        log.info("kernel %s ready in %.1f s", version, time.monotonic() - t0)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    k = _kernel_in(dest)
    if k is None:
        raise VMUnavailable(f"{dest} is incomplete after extraction")
    return k


# --------------------------------------------------------------------------------------------------
# The initramfs: busybox-static, the modules and an init script, as a gzipped cpio (newc) archive.

INIT_SCRIPT = r"""#!/bin/busybox sh
# recmg NUMA test VM init: mount the host root read-only under a tmpfs overlay, add the run's files,
# then run the command (MODE=command) or hand over to systemd (MODE=systemd).
/bin/busybox --install -s /bin
export PATH=/bin
fail() { echo "@@recmg-vm-error=$*@@"; sync; poweroff -f; sleep 60; }
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules); do insmod "/lib/modules/$m.ko" || fail "insmod $m failed"; done
mount -t 9p -o @HOST_MOUNT_OPTS@ hostroot /mnt/host || fail "cannot mount the host root over 9p"
mount -t tmpfs -o mode=0755 rw /mnt/rw || fail "cannot mount the overlay's tmpfs"
mkdir -p /mnt/rw/upper /mnt/rw/ovl-work
mount -t overlay -o lowerdir=/mnt/host,upperdir=/mnt/rw/upper,workdir=/mnt/rw/ovl-work overlay /newroot \
  || fail "cannot mount the overlay"
[ -n "$recmg_vm" ] && [ -d "/mnt/host$recmg_vm/root" ] || fail "no run directory (recmg_vm=$recmg_vm)"
cp -a "/mnt/host$recmg_vm/root/." /newroot/ || fail "cannot copy the run's files"
. "/mnt/host$recmg_vm/mode" || fail "no mode file"
# the host root may be a container's: systemd would then ignore the kernel command line
rm -f /newroot/.dockerenv
if [ "$MODE" = systemd ]; then
  umount /proc /sys
  umount /dev
  exec switch_root /newroot @SYSTEMD@
fi
mount -t proc proc /newroot/proc
mount -t sysfs sysfs /newroot/sys
mount -t devtmpfs devtmpfs /newroot/dev
mkdir -p /newroot/dev/shm /newroot/dev/pts
mount -t tmpfs -o mode=1777 shm /newroot/dev/shm
mount -t devpts devpts /newroot/dev/pts
mount -t tmpfs -o mode=0755 run /newroot/run
chroot /newroot /bin/sh @GUEST_DIR@/run.sh </dev/null
sync
poweroff -f
sleep 60
"""


def init_script() -> str:
    return (INIT_SCRIPT.replace("@HOST_MOUNT_OPTS@", HOST_MOUNT_OPTS).replace("@SYSTEMD@", SYSTEMD)
            .replace("@GUEST_DIR@", GUEST_DIR))


class _Cpio:
    """A writer of the cpio "newc" format, which the kernel unpacks as the initramfs."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        nb = name.encode() + b"\0"
        fields = (self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(nb), 0)
        self.ino += 1
        hdr = b"070701" + b"".join(b"%08X" % f for f in fields)
        self.buf.write(hdr + nb + b"\0" * (-(len(hdr) + len(nb)) % 4))
        self.buf.write(data + b"\0" * (-len(data) % 4))

    def dir(self, name: str) -> None:
        self._entry(name, 0o040755)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._entry(name, 0o100000 | perm, data)

    def chardev(self, name: str, major: int, minor: int) -> None:
        self._entry(name, 0o020600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        self.buf.write(b"\0" * (-self.buf.tell() % 512))
        return self.buf.getvalue()


def _is_static_elf(data: bytes) -> bool:
    """Whether data is a 64-bit little-endian ELF executable without a program interpreter."""
    if data[:6] != b"\x7fELF\x02\x01":
        return False
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for i in range(phnum):
        p_type, = struct.unpack_from("<I", data, phoff + i * phentsize)
        if p_type == 3:  # PT_INTERP: a dynamic executable
            return False
    return True


def build_initramfs(kernel: Kernel, cache_dir: Path = CACHE_DIR) -> Path:
    """The gzipped initramfs for this kernel (built once per kernel, init script and busybox)."""
    if not BUSYBOX.is_file():
        raise VMUnavailable(f"{BUSYBOX} not found: install busybox-static (make sysdeps)")
    busybox = BUSYBOX.read_bytes()
    if not _is_static_elf(busybox):
        raise VMUnavailable(f"{BUSYBOX} is not statically linked: install busybox-static (make sysdeps)")
    script = init_script()
    key = hashlib.sha256()
    parts = (kernel.version.encode(), script.encode(), busybox, *(m.read_bytes() for m in kernel.modules))
    for part in parts:
        key.update(hashlib.sha256(part).digest())
    out = cache_dir / f"initramfs-{kernel.version}-{key.hexdigest()[:12]}.cpio.gz"
    if out.is_file():
        return out
    c = _Cpio()
    for d in ("bin", "dev", "proc", "sys", "lib", "lib/modules", "mnt", "mnt/host", "mnt/rw", "newroot"):
        c.dir(d)
    c.chardev("dev/console", 5, 1)  # the kernel opens it for init's stdio before anything is mounted
    c.chardev("dev/null", 1, 3)
    c.file("bin/busybox", busybox, 0o755)
    c.file("init", script.encode(), 0o755)
    c.file("modules", ("\n".join(MODULES) + "\n").encode())
    for name, path in zip(MODULES, kernel.modules, strict=True):
        c.file(f"lib/modules/{name}.ko", path.read_bytes())
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}")
    tmp.write_bytes(gzip.compress(c.finish(), compresslevel=6, mtime=0))
    tmp.replace(out)
    for old in cache_dir.glob("initramfs-*.cpio.gz"):
        if old != out:
            old.unlink(missing_ok=True)
    log.info("built %s", out)
    return out


@dataclass(frozen=True)
class Prepared:
    qemu: str
    kernel: Kernel
    initramfs: Path


def prepare(cache_dir: Path = CACHE_DIR) -> Prepared:
    """Everything a guest run needs, or VMUnavailable saying what is missing."""
    qemu = shutil.which(QEMU)
    if qemu is None:
        raise VMUnavailable(f"{QEMU} not found: install qemu-system-x86 (make sysdeps)")
    kernel = prepare_kernel(cache_dir)
    return Prepared(qemu, kernel, build_initramfs(kernel, cache_dir))


# --------------------------------------------------------------------------------------------------
# Running the guest


def _run_script(argv: Sequence[str], cwd: str, env: Mapping[str, str]) -> str:
    lines = ["#!/bin/sh", "# written by tools/numa_vm.py: the command, its output and exit status"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in {**GUEST_ENV, **env}.items()]
    lines += [
        f"echo {BEGIN_MARK}",
        f"cd {shlex.quote(cwd)} || {{ echo '@@recmg-vm-exit=126@@'; exit 126; }}",
        f"{shlex.join(argv)} 2>&1",
        "rc=$?",
        'echo "@@recmg-vm-exit=$rc@@"',
        "exit $rc",
    ]
    return "\n".join(lines) + "\n"


def _test_unit() -> str:
    return f"""[Unit]
Description=recmg NUMA VM test command
SuccessAction=poweroff-immediate
FailureAction=poweroff-immediate

[Service]
Type=oneshot
ExecStart=/bin/sh {GUEST_DIR}/run.sh
StandardInput=null
StandardOutput=tty
StandardError=inherit
TTYPath=/dev/ttyS0
TTYReset=no
TTYVHangup=no
TimeoutStartSec=infinity
"""


def _write_files(root: Path, files: GuestFiles) -> None:
    for gpath, spec in files.items():
        if not gpath.startswith("/") or ".." in Path(gpath).parts:
            raise VMError(f"guest path {gpath!r} must be absolute, without '..'")
        dest = root / gpath.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(spec, Link):
            dest.symlink_to(spec.target)
            continue
        f = spec if isinstance(spec, File) else File(spec)
        data = f.content.encode() if isinstance(f.content, str) else f.content
        dest.write_bytes(data)
        dest.chmod(f.mode)


def _tail(text: str, n: int = 1) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return " | ".join(lines[-n:]) if lines else "(nothing)"


def _boot(p: Prepared, mode: str, argv: Sequence[str], files: GuestFiles, env: Mapping[str, str], cwd: str,
          timeout: float, label: str, extra_args: Sequence[str]) -> GuestResult:
    if not argv:
        raise VMError("no command to run in the guest")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    rundir = Path(tempfile.mkdtemp(prefix=f"run-{label}-", dir=CACHE_DIR))
    if any(c.isspace() for c in str(rundir)):
        raise VMError(f"the checkout's path {REPO} has white space: the kernel command line cannot carry it")
    logs = CACHE_DIR / "logs"
    logs.mkdir(exist_ok=True)
    log_path = logs / f"{label}.log"
    try:
        root = rundir / "root"
        all_files: dict[str, str | bytes | File | Link] = dict(files)
        all_files[f"{GUEST_DIR}/run.sh"] = File(_run_script(argv, cwd, env), 0o755)
        if mode == "systemd":
            all_files[f"/etc/systemd/system/{TEST_UNIT}"] = File(_test_unit())
        _write_files(root, all_files)
        (rundir / "mode").write_text(f"MODE={mode}\n")
        cmdline = [*KERNEL_ARGS, f"recmg_vm={rundir}", *extra_args]
        cmd = [p.qemu, *MACHINE_ARGS, "-kernel", str(p.kernel.image), "-initrd", str(p.initramfs),
               "-append", " ".join(cmdline)]
        log.debug("guest: %s", shlex.join(cmd))
        t0 = time.monotonic()
        with open(log_path, "wb") as out:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.PIPE)
            try:
                _, err = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate(timeout=QEMU_EXIT_TIMEOUT)
                console = log_path.read_bytes().decode(errors="replace").replace("\r", "")
                raise VMTimeout(f"the guest ({label}) did not finish within {timeout:.0f} s; last console "
                                f"line: {_tail(console)} (console log {log_path})") from None
        seconds = time.monotonic() - t0
        console = log_path.read_bytes().decode(errors="replace").replace("\r", "")
    finally:
        shutil.rmtree(rundir, ignore_errors=True)
    if proc.returncode != 0:
        msg = " ".join(err.decode(errors="replace").split())[:300] or f"exit status {proc.returncode}"
        raise VMError(f"{QEMU} failed: {msg}")
    bad = ERROR_RE.search(console)
    if bad:
        raise VMError(f"the guest's init failed: {bad.group(1)} (console log {log_path})")
    end = EXIT_RE.search(console)
    if end is None:
        raise VMError(f"the guest ({label}) ended without an exit status after {seconds:.0f} s; last console "
                      f"lines: {_tail(console, 3)} (console log {log_path})")
    start = console.find(BEGIN_MARK)
    output = console[start + len(BEGIN_MARK) + 1 : end.start()] if 0 <= start < end.start() else ""
    log.info("guest %s: exit %s in %.1f s", label, end.group(1), seconds)
    return GuestResult(int(end.group(1)), output, console, seconds, log_path)


def run_command(argv: Sequence[str], *, files: GuestFiles | None = None,
                env: Mapping[str, str] | None = None, cwd: str | None = None,
                timeout: float = DEFAULT_TIMEOUT, label: str = "command",
                prepared: Prepared | None = None) -> GuestResult:
    """Boot the guest and run argv as root under the initramfs's init (no systemd); files go into the
    guest's root first. The working directory is the checkout unless cwd says otherwise."""
    p = prepared or prepare()
    return _boot(p, "command", argv, files or {}, env or {}, cwd or str(REPO), timeout, label, ())


def run_systemd(argv: Sequence[str], *, files: GuestFiles | None = None,
                env: Mapping[str, str] | None = None, cwd: str | None = None,
                timeout: float = DEFAULT_TIMEOUT, label: str = "systemd",
                prepared: Prepared | None = None) -> GuestResult:
    """Boot the guest with systemd as PID 1; a oneshot unit (the boot's target) runs argv as root and
    powers the guest off when it ends. files (units, configs, links) go into the guest's root first."""
    p = prepared or prepare()
    args = (*SYSTEMD_ARGS, f"systemd.unit={TEST_UNIT}")
    return _boot(p, "systemd", argv, files or {}, env or {}, cwd or str(REPO), timeout, label, args)


# --------------------------------------------------------------------------------------------------
# CLI


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="numa_vm.py", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-v", "--verbose", action="store_true", help="log the steps (and the qemu command)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("prepare", help="fetch the kernel and build the initramfs (cached under build/vm)")
    for name, what in (("run", "under the initramfs's init"), ("systemd", "with systemd as PID 1")):
        sp = sub.add_parser(name, help=f"run a command in the guest, {what}")
        sp.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help="seconds (default %(default)s)")
        sp.add_argument("--cwd", default=None, help="working directory in the guest (default: the checkout)")
        sp.add_argument("command", nargs=argparse.REMAINDER, help="the command (after --)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.cmd == "prepare":
            p = prepare()
            print(f"qemu {p.qemu}\nkernel {p.kernel.image}\ninitramfs {p.initramfs}")
            return 0
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        if not command:
            ap.error("no command given (put it after --)")
        run = run_command if args.cmd == "run" else run_systemd
        r = run(command, timeout=args.timeout, cwd=args.cwd, label=f"cli-{args.cmd}")
    except VMError as exc:
        print(f"numa_vm: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(r.output)
    return r.returncode


if __name__ == "__main__":
    sys.exit(main())
