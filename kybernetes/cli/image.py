"""`kyb image`: the node's image store from the command line (import, pull, ls, rm, prune, build).

Each command works on the image store of the node a data dir runs (``<data-dir>/images``),
whether or not that node is running: the store takes a file lock, so an import while
the kubelet pulls is safe. This is how air-gapped nodes get images (``kyb image import``
of a docker-archive or OCI-layout tarball), as ``k3s ctr images import`` does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_image_parser(sub, default_data_dir: Path) -> None:
    im = sub.add_parser("image", help="manage the node's images (import, pull, ls, rm, prune, build)")
    isub = im.add_subparsers(dest="image_cmd", required=True)

    def with_data_dir(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--data-dir", default=str(default_data_dir),
                       help="the node's data dir (a server's, or an agent's)")
        p.add_argument("--private-registry", default="", help="registries.yaml (default <data-dir>/registries.yaml)")
        return p

    p = with_data_dir(isub.add_parser("import", help="import docker-archive or OCI-layout tarballs"))
    p.add_argument("files", nargs="+")
    p = with_data_dir(isub.add_parser("pull", help="pull an image from its registry (or a configured mirror)"))
    p.add_argument("image")
    p.add_argument("--creds", default="", help="USER:PASSWORD for the image's registry")
    p = with_data_dir(isub.add_parser("ls", help="list images"))
    p.add_argument("-q", "--quiet", action="store_true", help="only image ids")
    p.add_argument("--digests", action="store_true", help="show repo digests")
    p = with_data_dir(isub.add_parser("rm", help="remove images (not ones a container uses)"))
    p.add_argument("images", nargs="+")
    with_data_dir(isub.add_parser("prune", help="remove every image no container uses"))
    p = isub.add_parser("build", help="build a test image from this machine's busybox-static, as a tarball")
    p.add_argument("kind", choices=["busybox", "web"], help="busybox: a shell and its tools; web: busybox "
                   "plus an httpd serving /www on port 8080")
    p.add_argument("--tag", default="", help="image name (default busybox:latest or web:latest)")
    p.add_argument("--format", default="oci", choices=["oci", "docker"])
    p.add_argument("-o", "--output", required=True)


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.3g}{unit}" if unit != "B" else f"{int(size)}B"
        size /= 1000
    return f"{n}B"


async def _in_use(data: Path, args: argparse.Namespace) -> set[str]:
    """Image ids that containers of the node's OCI runtime use."""
    if not (data / "oci").is_dir():
        return set()
    from ..runtime.oci import OciRuntime
    from .main import open_images

    runtime = OciRuntime(str(data / "oci"), open_images(data, args))
    try:
        return {c.image for c in await runtime.list_containers()}
    finally:
        await runtime.close()


async def run_image(args: argparse.Namespace) -> int:
    from ..images.errors import ImageError

    if args.image_cmd == "build":
        from ..images import build
        return build.main([args.kind, "--tag", args.tag or f"{args.kind}:latest", "--format", args.format,
                           "-o", args.output])
    from .main import open_images

    data = Path(args.data_dir).expanduser().resolve()
    images = open_images(data, args)
    try:
        if args.image_cmd == "import":
            for f in args.files:
                for img in await images.import_archive(f):
                    print(f"imported {', '.join(img.repo_tags) or img.id} ({img.id[:19]}, {_human(img.size)})")
        elif args.image_cmd == "pull":
            creds = None
            if args.creds:
                from ..images.reference import parse
                from ..images.registry import Credential
                user, _, pw = args.creds.partition(":")
                creds = [Credential(parse(args.image).domain, user, pw)]
            img = await images.pull(args.image, creds)
            print(f"pulled {args.image}: {img.id} ({_human(img.size)})")
        elif args.image_cmd == "ls":
            rows = []
            for img in sorted(await images.list(), key=lambda i: (i.repo_tags or [""])[0]):
                if args.quiet:
                    print(img.id)
                    continue
                names = img.repo_tags or ["<none>:<none>"]
                for name in names:
                    repo, _, tag = name.rpartition(":")
                    digest = next((d.split("@", 1)[1] for d in img.repo_digests if d.startswith(repo + "@")),
                                  "<none>")
                    rows.append((repo, tag, digest, img.id.split(":", 1)[1][:13], _human(img.size)))
            if not args.quiet:
                head = ("IMAGE", "TAG", "DIGEST", "IMAGE ID", "SIZE")
                cols = [0, 1, 2, 3, 4] if args.digests else [0, 1, 3, 4]
                table = [head, *rows]
                widths = [max(len(r[c]) for r in table) for c in cols]
                for r in table:
                    print("   ".join(r[c].ljust(w) for c, w in zip(cols, widths)).rstrip())
        elif args.image_cmd == "rm":
            in_use = await _in_use(data, args)
            code = 0
            for ref in args.images:
                try:
                    await images.remove(ref, in_use=in_use)
                    print(f"Deleted: {ref}")
                except ImageError as e:
                    print(f"kyb image rm: {ref}: {e}", file=sys.stderr)
                    code = 1
            return code
        elif args.image_cmd == "prune":
            for img in await images.prune(await _in_use(data, args)):
                print(f"Deleted: {', '.join(img.repo_tags) or img.id}")
        return 0
    except ImageError as e:
        print(f"kyb image {args.image_cmd}: {e}", file=sys.stderr)
        return 1
    finally:
        await images.close()
