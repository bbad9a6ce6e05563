#!/usr/bin/env python3
"""Writes `vendor-base/`: a tiny linux/amd64 OCI image layout standing in for a
base image made elsewhere (by Docker or BuildKit), for `import "vendor-base"`.

Its config holds what a Docker-made base carries and oci-spec's typed config
model lacks: `Healthcheck`, `Shell`, `OnBuild`, `ArgsEscaped`, an unknown field
in `config` and an unknown top-level field. The example images built on it
check that imgc keeps them all.

Reproducible: every byte is fixed here (an uncompressed ustar layer with fixed
headers, JSON with sorted keys and no whitespace), so running it again gives
the committed files. Standard library only.

    rm -rf third_party/vendor-base && python3 third_party/make-vendor-base.py
"""

import hashlib
import io
import json
import os
import sys
import tarfile

EPOCH = 1704164645  # 2024-01-02T03:04:05Z
CREATED = "2024-01-02T03:04:05Z"

# (path, mode, content or None for a directory), parents before children.
ENTRIES = [
    ("etc", 0o755, None),
    ("etc/vendor-release", 0o644, b'NAME="Vendor Example base"\nVERSION_ID=3.1\n'),
    ("opt", 0o755, None),
    ("opt/vendor", 0o755, None),
    ("opt/vendor/README", 0o644, b"Vendor Example toolkit 3.1: nothing to run here, only data.\n"),
    ("var", 0o755, None),
    ("var/lib", 0o755, None),
    ("var/lib/vendor", 0o755, None),
]


def canonical(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def layer_tar():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for path, mode, content in ENTRIES:
            info = tarfile.TarInfo(path)
            info.mode = mode
            info.mtime = EPOCH
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if content is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "vendor-base")
    if os.path.exists(out):
        sys.exit(f"make-vendor-base: `{out}` exists; remove it first")
    blobs = os.path.join(out, "blobs", "sha256")
    os.makedirs(blobs)

    def put(data):
        digest = hashlib.sha256(data).hexdigest()
        with open(os.path.join(blobs, digest), "wb") as f:
            f.write(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    layer = layer_tar()
    config = {
        "architecture": "amd64",
        "os": "linux",
        "author": "Vendor Example <builds@vendor.example>",
        "created": CREATED,
        "config": {
            "Env": [
                "PATH=/usr/local/bin:/usr/bin:/bin",
                "VENDOR_HOME=/opt/vendor",
                "LANG=C",
            ],
            "Cmd": ["/etc/vendor-release"],
            "WorkingDir": "/opt/vendor",
            "ExposedPorts": {"7000/tcp": {}},
            "Volumes": {"/var/lib/vendor": {}},
            "Labels": {
                "org.opencontainers.image.title": "vendor-base",
                "org.opencontainers.image.vendor": "Vendor Example",
            },
            "StopSignal": "SIGINT",
            "Healthcheck": {
                "Test": ["CMD", "/bin/cat", "/etc/vendor-release"],
                "Interval": 30000000000,
                "Timeout": 5000000000,
                "Retries": 3,
            },
            "Shell": ["/bin/sh", "-c"],
            "OnBuild": ["RUN /opt/vendor/bin/register"],
            "ArgsEscaped": True,
            "X-Vendor-Policy": {"tier": "gold", "audited": True},
        },
        "rootfs": {
            "type": "layers",
            "diff_ids": [f"sha256:{hashlib.sha256(layer).hexdigest()}"],
        },
        "history": [
            {"created": CREATED, "created_by": "ADD vendor-rootfs.tar / # buildkit"},
            {
                "created": CREATED,
                "created_by": "HEALTHCHECK CMD /bin/cat /etc/vendor-release",
                "empty_layer": True,
            },
        ],
        "x-vendor-build": {"pipeline": "vendor-ci", "run": 1234},
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **put(canonical(config))},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **put(layer)}],
        "annotations": {"org.opencontainers.image.created": CREATED},
    }
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                **put(canonical(manifest)),
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {"org.opencontainers.image.ref.name": "3.1"},
            }
        ],
    }
    with open(os.path.join(out, "index.json"), "wb") as f:
        f.write(canonical(index))
    with open(os.path.join(out, "oci-layout"), "wb") as f:
        f.write(canonical({"imageLayoutVersion": "1.0.0"}))


if __name__ == "__main__":
    main()
