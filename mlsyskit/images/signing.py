"""Signed bundles: an ed25519 signature over the bundle's manifest (which holds the size and
sha256 of every other member), made and checked with `cryptography`. Keys are the ones
OpenSSL or OpenSSH make (README, "Signed bundles"):

    openssl genpkey -algorithm ed25519 -out bundle-key.pem          # private (PEM, PKCS#8)
    openssl pkey -in bundle-key.pem -pubout -out bundle-key.pub.pem # public
    ssh-keygen -t ed25519 -N '' -f bundle-key                       # or OpenSSH's pair

The signature member is JSON: the algorithm, the public key's fingerprint (sha256 of its raw
32 bytes, to say which key signed) and the signature, base64."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

from mlsyskit.errors import UsageError

ALGORITHM = "ed25519"
SIGNATURE_MAX = 4096
KEYGEN = "make one with `openssl genpkey -algorithm ed25519 -out key.pem` (README, Signed bundles)"


def _raw(public: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    raw: bytes = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return raw


def fingerprint(public: Any) -> str:
    return "sha256:" + hashlib.sha256(_raw(public)).hexdigest()


def load_private_key(path: Path) -> Any:
    """An ed25519 private key from a PEM (PKCS#8) or OpenSSH file without a passphrase."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"--sign {path}: cannot read the key ({exc.strerror})", fix=KEYGEN) from None
    try:
        key: Any = (
            serialization.load_ssh_private_key(data, password=None)
            if b"OPENSSH PRIVATE KEY" in data
            else serialization.load_pem_private_key(data, password=None)
        )
    except (ValueError, TypeError) as exc:
        raise UsageError(f"--sign {path}: not an unencrypted private key ({exc})", fix=KEYGEN) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise UsageError(f"--sign {path}: not an ed25519 key", fix=KEYGEN)
    return key


def load_public_key(path: Path) -> Any:
    """An ed25519 public key from a PEM file or an OpenSSH `ssh-ed25519 ...` line."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the public key ({exc.strerror})", fix="give the signer's public key file") from None
    try:
        key: Any = serialization.load_ssh_public_key(data.strip()) if data.lstrip().startswith(b"ssh-") else serialization.load_pem_public_key(data)
    except (ValueError, TypeError, IndexError) as exc:
        raise UsageError(f"{path}: not a public key ({exc})", fix="give the signer's public key (PEM, or an OpenSSH .pub line)") from None
    if not isinstance(key, Ed25519PublicKey):
        raise UsageError(f"{path}: not an ed25519 public key", fix="bundles are signed with ed25519 keys")
    return key


def sign(manifest: bytes, key: Any) -> bytes:
    """The signature member's bytes for a manifest."""
    signature = key.sign(manifest)
    return json.dumps({"algorithm": ALGORITHM, "key": fingerprint(key.public_key()), "signature": base64.b64encode(signature).decode()}).encode() + b"\n"


def check(manifest: bytes, member: bytes | None, keys: list[Any], where: Path) -> str:
    """The fingerprint of the trusted key that signed the manifest; a UsageError when the
    bundle is unsigned, or signed by no key given, or the signature does not verify."""
    from cryptography.exceptions import InvalidSignature

    trusted = ", ".join(fingerprint(k)[:19] for k in keys)
    if member is None:
        raise UsageError(
            f"{where} is not signed, and a signature is required (by {trusted})", fix="ask the sender for a bundle written with `invoke bundle --sign KEY`"
        )
    try:
        record = json.loads(member)
        if not isinstance(record, dict) or record.get("algorithm") != ALGORITHM:
            raise ValueError("not an ed25519 signature")
        signature = base64.b64decode(str(record["signature"]), validate=True)
        signer = str(record.get("key", ""))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{where}: its signature cannot be read ({exc})", fix="ask the sender for the bundle again") from None
    for key in keys:
        try:
            key.verify(signature, manifest)
            return fingerprint(key)
        except InvalidSignature:
            continue
    shown = signer[:19] if all(c.isalnum() or c == ":" for c in signer) else "an unknown key"
    raise UsageError(
        f"{where} is not signed by a trusted key (signed by {shown}; trusted: {trusted})",
        fix="check the public key you were given, or ask the sender to sign with it",
    )
