"""Encryption at rest: a master key, envelope encryption with AES-GCM, and key rotation.

Each encrypted message (a blob of the artifact store, a logged text input in the metadata
database) is an *envelope*: a fresh random 256-bit data key encrypts the content with
AES-256-GCM, and the master key wraps (encrypts) that data key. Rotating the master key
re-wraps the data keys and leaves every ciphertext body as it is (:func:`rewrap`).

Envelope format, version 1 (fixed sizes, offsets in bytes)::

    0    4   magic b"AFBE"
    4    1   version (1)
    5    8   key id: fingerprint of the master key that wrapped the data key
    13   12  wrap nonce
    25   48  wrapped data key: AES-256-GCM under the master's wrapping key (32 bytes + 16 tag)
    73   12  body nonce
    85   ..  body: AES-256-GCM of the content under the data key (ciphertext + 16 tag)

The wrapped key is authenticated together with the header before it (magic, version, key id).
The body is authenticated with magic, version and the caller's ``aad`` (a blob's digest, a
prediction's id), so a body moved to another address does not decrypt; it leaves out the key
id on purpose, which is what lets rotation change the key id without touching the body.

The master key never encrypts data itself: the wrapping key is derived from it with
HKDF-SHA256, and its key id is the first 8 bytes of HMAC-SHA256(master, "aifab-key-id") as 16
hex characters, which names a key without revealing it. ``aifab.yaml`` holds only where the
key is (a file or an environment variable) and its key id, never the key (docs/encryption.md).

>>> key = MasterKey.generate()
>>> cipher = EnvelopeCipher(key)
>>> sealed = cipher.encrypt(b"hello", b"ab12")
>>> cipher.decrypt(sealed, b"ab12"), b"hello" in sealed
(b'hello', False)
>>> new = MasterKey.generate()
>>> rotated = rewrap(sealed, key, new)
>>> read_envelope(rotated).body == read_envelope(sealed).body
True
>>> EnvelopeCipher(new).decrypt(rotated, b"ab12")
b'hello'
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aifab.core.config import EncryptionConfig
from aifab.core.errors import AuthError, ConfigError, Conflict, IntegrityError

__all__ = [
    "DEFAULT_KEY_ENV",
    "Envelope",
    "EnvelopeCipher",
    "MasterKey",
    "encryption_section",
    "read_envelope",
    "rewrap",
    "workspace_cipher",
    "write_encryption_section",
    "write_key_file",
]

log = logging.getLogger(__name__)

DEFAULT_KEY_ENV = "AIFAB_KEY"
KEY_BYTES = 32
MAGIC = b"AFBE"
VERSION = 1
_KEY_ID_BYTES = 8
_NONCE_BYTES = 12
_TAG_BYTES = 16
_WRAPPED_BYTES = KEY_BYTES + _TAG_BYTES
HEADER_BYTES = len(MAGIC) + 1 + _KEY_ID_BYTES + _NONCE_BYTES + _WRAPPED_BYTES + _NONCE_BYTES  # 85
_ROTATE_HINT = (
    "if a key rotation was interrupted, run it again with both keys: "
    "aifab key rotate --new-key-file NEW --old-key-file OLD"
)


class MasterKey:
    """A 256-bit master key. Its ``repr`` and every message show only its :attr:`key_id`.

    Key files and variables hold 32 raw bytes, 64 hex characters, or the base64 (standard or
    URL-safe) of 32 bytes; surrounding whitespace in text forms is ignored.

    >>> key = MasterKey.parse(b"00" * 32, where="example")
    >>> key.key_id, repr(key)
    ('9c36d5aca3df2add', 'MasterKey(key_id=9c36d5aca3df2add)')
    >>> MasterKey.parse(key.export().encode(), where="again").key_id == key.key_id
    True
    """

    __slots__ = ("_material", "_wrapper", "key_id")

    def __init__(self, material: bytes) -> None:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        if not isinstance(material, bytes) or len(material) != KEY_BYTES:
            got = len(material) if isinstance(material, bytes) else type(material).__name__
            raise ConfigError(f"a master key is {KEY_BYTES} bytes; got {got}")
        self._material = material
        self.key_id = hmac.new(material, b"aifab-key-id", hashlib.sha256).digest()[:_KEY_ID_BYTES].hex()
        # A derived key, not the master itself, wraps data keys: one key, one purpose.
        hkdf = HKDF(
            algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=b"aifab data-key wrapping v1"
        )
        self._wrapper = AESGCM(hkdf.derive(material))

    def __repr__(self) -> str:
        return f"MasterKey(key_id={self.key_id})"

    @classmethod
    def generate(cls) -> MasterKey:
        """A new random key (from the operating system's CSPRNG)."""
        return cls(secrets.token_bytes(KEY_BYTES))

    @classmethod
    def parse(cls, raw: bytes, *, where: str) -> MasterKey:
        """A key from the bytes of a key file or variable; ConfigError naming ``where`` otherwise."""
        if len(raw) == KEY_BYTES:
            return cls(raw)
        text = raw.strip()
        material: bytes | None = None
        if re.fullmatch(rb"[0-9a-fA-F]{64}", text):
            material = bytes.fromhex(text.decode("ascii"))
        else:
            padded = text + b"=" * (-len(text) % 4)
            for altchars in (None, b"-_"):  # standard, then URL-safe; no character skipped
                try:
                    material = base64.b64decode(padded, altchars=altchars, validate=True)
                except (binascii.Error, ValueError):
                    continue
                if len(material) == KEY_BYTES:
                    break
                material = None
        if material is None:
            raise ConfigError(
                f"{where}: not a master key; expected {KEY_BYTES} raw bytes, 64 hex characters or the base64 "
                f"of {KEY_BYTES} bytes (create one with: aifab key generate --out FILE)"
            )
        return cls(material)

    @classmethod
    def from_file(cls, path: str | Path) -> MasterKey:
        """Read a key file; AuthError when it is missing, ConfigError when it holds no key."""
        path = Path(path).expanduser()
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise AuthError(f"key file {path}: not found", details={"key_file": str(path)}) from None
        except IsADirectoryError:
            raise ConfigError(f"key file {path}: is a folder; expected a file") from None
        mode = path.stat().st_mode
        if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning(
                "key file %s can be read by other users (mode %o); chmod 600 it", path, stat.S_IMODE(mode)
            )
        return cls.parse(raw, where=f"key file {path}")

    @classmethod
    def from_env(cls, var: str, *, environ: Mapping[str, str] | None = None) -> MasterKey:
        """Read a key from an environment variable; AuthError when it is not set."""
        value = (os.environ if environ is None else environ).get(var)
        if not value:
            raise AuthError(
                f"environment variable {var}: not set; it must hold the master key "
                "(create a key with: aifab key generate --out FILE)",
                details={"key_env": var},
            )
        return cls.parse(value.encode("utf-8"), where=f"environment variable {var}")

    @classmethod
    def load(
        cls, *, key_file: str | Path | None = None, key_env: str | None = None, option: str = "--key"
    ) -> MasterKey:
        """The key from exactly one of a file or a variable (``option`` names the CLI flags in errors).

        >>> MasterKey.load(key_env="AIFAB_TEST_KEY", key_file="k", option="--new-key")
        Traceback (most recent call last):
        ...
        aifab.core.errors.ConfigError: give the key with --new-key-file or --new-key-env, not both
        """
        if key_file is not None and key_env is not None:
            raise ConfigError(f"give the key with {option}-file or {option}-env, not both")
        if key_file is not None:
            return cls.from_file(key_file)
        if key_env is not None:
            return cls.from_env(key_env)
        raise ConfigError(f"no key given; pass {option}-file PATH or {option}-env VAR")

    def export(self) -> str:
        """The key as base64 text, the form :func:`write_key_file` writes."""
        return base64.b64encode(self._material).decode("ascii")

    def wrap(self, data_key: bytes, header: bytes) -> tuple[bytes, bytes]:
        """(nonce, wrapped data key), authenticated together with ``header``."""
        nonce = os.urandom(_NONCE_BYTES)
        return nonce, self._wrapper.encrypt(nonce, data_key, header)

    def unwrap(self, nonce: bytes, wrapped: bytes, header: bytes) -> bytes:
        """The data key; IntegrityError when the wrapped key or its header was altered."""
        from cryptography.exceptions import InvalidTag

        try:
            return self._wrapper.decrypt(nonce, wrapped, header)
        except InvalidTag:
            raise IntegrityError(
                f"the wrapped data key does not authenticate under key {self.key_id}; "
                "the envelope header was altered or damaged"
            ) from None


@dataclass(frozen=True)
class Envelope:
    """The parts of an encrypted message (see the module docstring for the layout)."""

    version: int
    key_id: str
    wrap_nonce: bytes
    wrapped_key: bytes
    nonce: bytes
    ciphertext: bytes

    @property
    def body(self) -> bytes:
        """Nonce and ciphertext: the part key rotation must leave untouched."""
        return self.nonce + self.ciphertext

    def wrap_header(self) -> bytes:
        return _wrap_header(self.key_id)

    def to_bytes(self) -> bytes:
        return self.wrap_header() + self.wrap_nonce + self.wrapped_key + self.nonce + self.ciphertext


def read_envelope(data: bytes) -> Envelope:
    """Split an encrypted message into its parts; IntegrityError when it is not one.

    >>> read_envelope(b"plain text")
    Traceback (most recent call last):
    ...
    aifab.core.errors.IntegrityError: not an aifab envelope (no AFBE header): the stored bytes are not encrypted or are damaged
    """
    if len(data) < HEADER_BYTES + _TAG_BYTES or not data.startswith(MAGIC):
        raise IntegrityError(
            "not an aifab envelope (no AFBE header): the stored bytes are not encrypted or are damaged"
        )
    version = data[len(MAGIC)]
    if version != VERSION:
        raise IntegrityError(
            f"envelope format version {version} is not supported (this aifab reads version {VERSION})"
        )
    at = len(MAGIC) + 1
    parts = []
    for size in (_KEY_ID_BYTES, _NONCE_BYTES, _WRAPPED_BYTES, _NONCE_BYTES):
        parts.append(data[at : at + size])
        at += size
    key_id, wrap_nonce, wrapped_key, nonce = parts
    return Envelope(VERSION, key_id.hex(), wrap_nonce, wrapped_key, nonce, data[at:])


class EnvelopeCipher:
    """The :class:`aifab.store.artifacts.Cipher` of an encrypted workspace.

    Encrypts under ``master``; decrypts messages wrapped by ``master`` or by one of
    ``previous`` (the keys a rotation moves away from). Holds no mutable state: one instance
    may serve many threads.

    >>> old, new = MasterKey.generate(), MasterKey.generate()
    >>> sealed = EnvelopeCipher(old).encrypt(b"x", b"id")
    >>> EnvelopeCipher(new, previous=[old]).decrypt(sealed, b"id")
    b'x'
    >>> EnvelopeCipher(new).decrypt(sealed, b"id")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    aifab.core.errors.AuthError: encrypted with key ...; the key given is ...
    """

    def __init__(self, master: MasterKey, *, previous: Sequence[MasterKey] = ()) -> None:
        self.master = master
        self._keys = {k.key_id: k for k in previous} | {master.key_id: master}

    def __repr__(self) -> str:
        return f"EnvelopeCipher(key_id={self.master.key_id})"

    @property
    def key_id(self) -> str:
        return self.master.key_id

    def encrypt(self, data: bytes, aad: bytes) -> bytes:
        """A new envelope: a fresh data key and nonce for every message."""
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        data_key = AESGCM.generate_key(bit_length=KEY_BYTES * 8)
        nonce = os.urandom(_NONCE_BYTES)
        ciphertext = AESGCM(data_key).encrypt(nonce, data, _body_aad(aad))
        header = _wrap_header(self.master.key_id)
        wrap_nonce, wrapped = self.master.wrap(data_key, header)
        return header + wrap_nonce + wrapped + nonce + ciphertext

    def decrypt(self, data: bytes, aad: bytes) -> bytes:
        """The content; AuthError for a key this cipher does not hold, IntegrityError when
        anything was altered (or the envelope belongs to another ``aad``)."""
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        envelope = read_envelope(data)
        key = self._key(envelope.key_id)
        data_key = key.unwrap(envelope.wrap_nonce, envelope.wrapped_key, envelope.wrap_header())
        try:
            return AESGCM(data_key).decrypt(envelope.nonce, envelope.ciphertext, _body_aad(aad))
        except InvalidTag:
            raise IntegrityError(
                "the ciphertext does not authenticate: it was altered or damaged, or belongs to another address"
            ) from None

    def rewrap(self, data: bytes) -> bytes | None:
        """The envelope with its data key wrapped under ``master``, the body byte for byte the
        same; None when it is wrapped under ``master`` already (so rotation can resume)."""
        envelope = read_envelope(data)
        if envelope.key_id == self.master.key_id:
            return None
        old = self._key(envelope.key_id)
        return rewrap(data, old, self.master)

    def _key(self, key_id: str) -> MasterKey:
        key = self._keys.get(key_id)
        if key is None:
            given = ", ".join(sorted(self._keys))
            raise AuthError(
                f"encrypted with key {key_id}; the key given is {given}; {_ROTATE_HINT}",
                details={"key_id": key_id, "given_key_ids": sorted(self._keys)},
            )
        return key


def rewrap(data: bytes, old: MasterKey, new: MasterKey) -> bytes:
    """Move an envelope from ``old`` to ``new``: only the key id and the wrapped data key change.

    AuthError when ``data`` is not wrapped under ``old``; IntegrityError when its header was altered.
    """
    envelope = read_envelope(data)
    if envelope.key_id != old.key_id:
        raise AuthError(
            f"encrypted with key {envelope.key_id}; the old key given is {old.key_id}",
            details={"key_id": envelope.key_id, "given_key_ids": [old.key_id]},
        )
    data_key = old.unwrap(envelope.wrap_nonce, envelope.wrapped_key, envelope.wrap_header())
    header = _wrap_header(new.key_id)
    wrap_nonce, wrapped = new.wrap(data_key, header)
    return header + wrap_nonce + wrapped + envelope.body


def _wrap_header(key_id: str) -> bytes:
    return MAGIC + bytes([VERSION]) + bytes.fromhex(key_id)


def _body_aad(aad: bytes) -> bytes:
    return MAGIC + bytes([VERSION]) + aad


# -- the workspace side: where the key is, and the cipher built from it --------------------


def encryption_section(
    root: Path, *, key: MasterKey, key_file: str | Path | None = None, key_env: str | None = None
) -> EncryptionConfig:
    """The ``encryption`` section of ``aifab.yaml`` for ``key`` found at ``key_file`` or ``key_env``.

    A key file must lie outside the workspace folder (a copy of the folder would carry its
    key); it is recorded as an absolute path.

    >>> import tempfile
    >>> key = MasterKey.parse(b"00" * 32, where="k")
    >>> section = encryption_section(Path(tempfile.mkdtemp()), key=key, key_env="AIFAB_KEY")
    >>> section.enabled, section.key_env, section.key_id
    (True, 'AIFAB_KEY', '9c36d5aca3df2add')
    """
    if (key_file is None) == (key_env is None):
        raise ConfigError("an encrypted workspace needs exactly one of key_file or key_env")
    path = None
    if key_file is not None:
        resolved = Path(key_file).expanduser().resolve()
        root = Path(root).resolve()
        if resolved == root or root in resolved.parents:
            raise ConfigError(
                f"key file {resolved}: inside the workspace {root}; keep the key outside it, "
                "or a copy of the workspace carries its own key"
            )
        path = str(resolved)
    return EncryptionConfig(enabled=True, key_file=path, key_env=key_env, key_id=key.key_id)


def workspace_cipher(
    section: EncryptionConfig, root: Path, *, key: MasterKey | None = None, environ: Mapping[str, str] | None = None
) -> EnvelopeCipher | None:
    """The cipher of a workspace (None when it is not encrypted), with its key checked.

    ``key`` overrides the key's place named in ``aifab.yaml``. AuthError when the key cannot be
    found (naming the config key and the file or variable to set) or is not the workspace's
    (naming both key ids); ConfigError when a key is given to a workspace that is not encrypted.
    """
    config = Path(root) / "aifab.yaml"
    if not section.enabled:
        if key is not None:
            raise ConfigError(
                f"{config}: this workspace is not encrypted (encryption.enabled is false); it takes no key"
            )
        return None
    source = "the key given"
    if key is None:
        key, source = _configured_key(section, config, environ)
    if key.key_id != section.key_id:
        raise AuthError(
            f"{config}: this workspace was encrypted with key {section.key_id}; {source} is key {key.key_id}; "
            f"give the workspace's key, or {_ROTATE_HINT}",
            details={"key_id": section.key_id, "given_key_id": key.key_id},
        )
    return EnvelopeCipher(key)


def _configured_key(
    section: EncryptionConfig, config: Path, environ: Mapping[str, str] | None
) -> tuple[MasterKey, str]:
    env = os.environ if environ is None else environ
    if section.key_env is not None:
        if not env.get(section.key_env):
            raise AuthError(
                f"{config}: this workspace is encrypted (key {section.key_id}) and encryption.key_env names the "
                f"environment variable {section.key_env}, which is not set; "
                f"set {section.key_env} to the workspace's key",
                details={"key_env": section.key_env, "key_id": section.key_id},
            )
        return MasterKey.from_env(section.key_env, environ=env), f"the key in ${section.key_env}"
    assert section.key_file is not None  # EncryptionConfig guarantees one of the two
    path = Path(section.key_file).expanduser()
    if not path.is_absolute():
        path = config.parent / path
    if not path.is_file():
        raise AuthError(
            f"{config}: this workspace is encrypted (key {section.key_id}) and encryption.key_file names "
            f"{path}, which does not exist; put the workspace's key there or point encryption.key_file at it",
            details={"key_file": str(path), "key_id": section.key_id},
        )
    return MasterKey.from_file(path), f"the key in {path}"


def write_key_file(path: str | Path, key: MasterKey) -> Path:
    """Create ``path`` holding ``key`` as base64 text, readable only by its owner (0600).

    Conflict when the file exists: a key is never overwritten (the data it encrypted would be lost).
    """
    path = Path(path).expanduser()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise Conflict(f"key file {path}: exists already; a key file is never overwritten") from None
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(key.export() + "\n")
        f.flush()
        os.fsync(f.fileno())
    return path


def encryption_yaml(section: EncryptionConfig) -> str:
    """The ``encryption:`` block of ``aifab.yaml`` (JSON strings are valid YAML scalars).

    >>> print(encryption_yaml(EncryptionConfig(enabled=True, key_env="AIFAB_KEY", key_id="0" * 16)), end="")
    encryption:                         # docs/encryption.md: where the key is, never the key itself
      enabled: true
      key_file: null
      key_env: "AIFAB_KEY"
      key_id: "0000000000000000"
    """

    def scalar(value: Any) -> str:
        return "null" if value is None else json.dumps(value)

    return (
        "encryption:                         # docs/encryption.md: where the key is, never the key itself\n"
        f"  enabled: {'true' if section.enabled else 'false'}\n"
        f"  key_file: {scalar(section.key_file)}\n"
        f"  key_env: {scalar(section.key_env)}\n"
        f"  key_id: {scalar(section.key_id)}\n"
    )


_SECTION = re.compile(r"^encryption:[^\n]*\n?(?:(?:[ \t]+[^\n]*)?\n)*?(?=\S|\Z)", re.MULTILINE)


def replace_encryption_yaml(text: str, section: EncryptionConfig) -> str:
    """``text`` (an ``aifab.yaml``) with its ``encryption:`` block replaced, or appended;
    every other line, comments included, stays as it was.

    >>> before = "version: 1  # kept\\nencryption:\\n  enabled: false\\nsplit:\\n  seed: 3\\n"
    >>> after = replace_encryption_yaml(before, EncryptionConfig(enabled=True, key_env="K", key_id="1" * 16))
    >>> after.splitlines()[0], after.splitlines()[-2:]
    ('version: 1  # kept', ['split:', '  seed: 3'])
    """
    block = encryption_yaml(section)
    if _SECTION.search(text):
        return _SECTION.sub(lambda _m: block, text, count=1)
    return text + ("" if text.endswith("\n") or not text else "\n") + block


def write_encryption_section(config_path: Path, section: EncryptionConfig) -> None:
    """Point ``aifab.yaml`` at a key, atomically (temp file, fsync, rename): a crash leaves the
    old file or the new one. The result is read back and checked before it replaces the old."""
    import yaml

    from aifab.core.config import WorkspaceConfig, parse

    text = replace_encryption_yaml(config_path.read_text(encoding="utf-8"), section)
    if parse(WorkspaceConfig, yaml.safe_load(text), source=str(config_path)).encryption != section:
        raise ConfigError(
            f"{config_path}: could not rewrite the encryption section; set it by hand to {section.model_dump()}"
        )
    tmp = config_path.with_name(config_path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, config_path)

