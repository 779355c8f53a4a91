"""aifab.security.crypto: master keys, the envelope format, AES-GCM at work, re-wrapping, and
the encryption section of aifab.yaml."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
import yaml

from aifab.core.config import EncryptionConfig, WorkspaceConfig, parse
from aifab.core.errors import AuthError, ConfigError, Conflict, IntegrityError
from aifab.security.crypto import (
    HEADER_BYTES,
    EnvelopeCipher,
    MasterKey,
    read_envelope,
    replace_encryption_yaml,
    rewrap,
    workspace_cipher,
    write_encryption_section,
    write_key_file,
)

MATERIAL = bytes(range(32))
AAD = b"9f" * 32


@pytest.fixture
def key() -> MasterKey:
    return MasterKey(MATERIAL)


# -- keys -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "form",
    [
        MATERIAL,  # raw bytes
        MATERIAL.hex().encode() + b"\n",
        MATERIAL.hex().upper().encode(),
        base64.b64encode(MATERIAL) + b"\n",
        base64.urlsafe_b64encode(MATERIAL).rstrip(b"="),
    ],
    ids=["raw", "hex", "HEX", "base64", "urlsafe-unpadded"],
)
def test_every_key_form_gives_the_same_key(form: bytes, key: MasterKey) -> None:
    assert MasterKey.parse(form, where="test").key_id == key.key_id


@pytest.mark.parametrize("bad", [b"", b"short", MATERIAL[:31], b"zz" * 32, base64.b64encode(MATERIAL[:16])])
def test_anything_else_is_a_config_error_naming_where(bad: bytes) -> None:
    with pytest.raises(ConfigError, match=r"key file /k: not a master key.*aifab key generate"):
        MasterKey.parse(bad, where="key file /k")


def test_key_ids_name_keys_without_showing_them(key: MasterKey) -> None:
    other = MasterKey(bytes(32))
    assert len(key.key_id) == 16 and key.key_id != other.key_id
    assert MasterKey(MATERIAL).key_id == key.key_id  # stable: it is recorded in aifab.yaml
    for text in (repr(key), repr(EnvelopeCipher(key))):
        assert key.export() not in text and MATERIAL.hex() not in text and key.key_id in text


def test_a_key_file_is_created_0600_once_and_read_back(tmp_path: Path) -> None:
    key = MasterKey.generate()
    path = write_key_file(tmp_path / "k", key)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert MasterKey.from_file(path).key_id == key.key_id
    with pytest.raises(Conflict, match="never overwritten"):
        write_key_file(path, MasterKey.generate())
    assert MasterKey.from_file(path).key_id == key.key_id


def test_missing_key_sources_are_auth_errors(tmp_path: Path) -> None:
    with pytest.raises(AuthError, match="not found"):
        MasterKey.from_file(tmp_path / "none")
    with pytest.raises(AuthError, match="AIFAB_NOPE: not set"):
        MasterKey.from_env("AIFAB_NOPE", environ={})
    assert MasterKey.from_env("K", environ={"K": MATERIAL.hex()}).key_id == MasterKey(MATERIAL).key_id


# -- envelopes ------------------------------------------------------------------------------


def test_round_trip_and_the_layout(key: MasterKey) -> None:
    data = b"the quick brown fox " * 10
    sealed = EnvelopeCipher(key).encrypt(data, AAD)
    assert len(sealed) == HEADER_BYTES + len(data) + 16
    assert data not in sealed and data[:16] not in sealed
    envelope = read_envelope(sealed)
    assert (envelope.version, envelope.key_id) == (1, key.key_id)
    assert envelope.to_bytes() == sealed
    assert EnvelopeCipher(key).decrypt(sealed, AAD) == data
    assert EnvelopeCipher(key).decrypt(EnvelopeCipher(key).encrypt(b"", AAD), AAD) == b""


def test_every_message_gets_a_fresh_data_key_and_nonce(key: MasterKey) -> None:
    a, b = (read_envelope(EnvelopeCipher(key).encrypt(b"same", AAD)) for _ in range(2))
    assert a.nonce != b.nonce and a.wrapped_key != b.wrapped_key and a.ciphertext != b.ciphertext


def test_a_ciphertext_is_bound_to_its_address(key: MasterKey) -> None:
    sealed = EnvelopeCipher(key).encrypt(b"hello", AAD)
    with pytest.raises(IntegrityError, match="another address"):
        EnvelopeCipher(key).decrypt(sealed, b"0" * 64)


@pytest.mark.parametrize(
    ("where", "error", "message"),
    [
        (0, IntegrityError, "not an aifab envelope"),  # magic
        (4, IntegrityError, "version"),
        (5, AuthError, "encrypted with key"),  # key id: another key
        (20, IntegrityError, "wrapped data key"),  # wrap nonce
        (40, IntegrityError, "wrapped data key"),
        (80, IntegrityError, "ciphertext"),  # body nonce
        (-1, IntegrityError, "ciphertext"),  # tag
        (HEADER_BYTES, IntegrityError, "ciphertext"),
    ],
)
def test_one_changed_byte_anywhere_is_caught(key: MasterKey, where: int, error: type, message: str) -> None:
    sealed = bytearray(EnvelopeCipher(key).encrypt(b"some content to protect", AAD))
    sealed[where] ^= 0x01
    with pytest.raises(error, match=message):
        EnvelopeCipher(key).decrypt(bytes(sealed), AAD)


def test_truncated_or_plain_bytes_are_not_envelopes(key: MasterKey) -> None:
    sealed = EnvelopeCipher(key).encrypt(b"content", AAD)
    for bad in (sealed[:HEADER_BYTES], b"plain text that is long enough to be confused " * 3):
        with pytest.raises(IntegrityError, match="not an aifab envelope"):
            EnvelopeCipher(key).decrypt(bad, AAD)


def test_the_wrong_key_names_both_key_ids(key: MasterKey) -> None:
    other = MasterKey.generate()
    sealed = EnvelopeCipher(key).encrypt(b"x", AAD)
    with pytest.raises(AuthError) as err:
        EnvelopeCipher(other).decrypt(sealed, AAD)
    assert f"encrypted with key {key.key_id}; the key given is {other.key_id}" in err.value.message
    assert err.value.details == {"key_id": key.key_id, "given_key_ids": [other.key_id]}


# -- re-wrapping ----------------------------------------------------------------------------


def test_rewrap_changes_only_the_key_part(key: MasterKey) -> None:
    new = MasterKey.generate()
    sealed = EnvelopeCipher(key).encrypt(b"payload " * 50, AAD)
    moved = rewrap(sealed, key, new)
    before, after = read_envelope(sealed), read_envelope(moved)
    assert after.body == before.body and moved.endswith(before.body)
    assert (after.key_id, before.key_id) == (new.key_id, key.key_id)
    assert after.wrapped_key != before.wrapped_key
    assert EnvelopeCipher(new).decrypt(moved, AAD) == b"payload " * 50
    with pytest.raises(AuthError):
        EnvelopeCipher(key).decrypt(moved, AAD)  # the old key no longer opens it
    with pytest.raises(AuthError, match="the old key given is"):
        rewrap(moved, key, new)


def test_a_rotating_cipher_reads_both_keys_and_skips_what_is_done(key: MasterKey) -> None:
    new = MasterKey.generate()
    old_sealed = EnvelopeCipher(key).encrypt(b"old", AAD)
    rotating = EnvelopeCipher(new, previous=[key])
    new_sealed = rotating.encrypt(b"new", AAD)
    assert read_envelope(new_sealed).key_id == new.key_id  # writes under the new key
    assert rotating.decrypt(old_sealed, AAD) == b"old" and rotating.decrypt(new_sealed, AAD) == b"new"
    assert rotating.rewrap(new_sealed) is None
    assert read_envelope(rotating.rewrap(old_sealed) or b"").key_id == new.key_id
    with pytest.raises(AuthError, match="aifab key rotate"):
        EnvelopeCipher(new).rewrap(EnvelopeCipher(MasterKey.generate()).encrypt(b"?", AAD))


# -- the workspace's encryption section -----------------------------------------------------


def test_the_section_never_holds_the_key_and_checks_its_id(tmp_path: Path, key: MasterKey) -> None:
    section = EncryptionConfig(enabled=True, key_env="K", key_id=key.key_id)
    assert workspace_cipher(section, tmp_path, environ={"K": key.export()}).key_id == key.key_id
    with pytest.raises(AuthError, match=f"encrypted with key {key.key_id}; the key in \\$K is key"):
        workspace_cipher(section, tmp_path, environ={"K": MasterKey.generate().export()})
    assert workspace_cipher(EncryptionConfig(), tmp_path) is None
    with pytest.raises(ConfigError, match="not encrypted"):
        workspace_cipher(EncryptionConfig(), tmp_path, key=key)


@pytest.mark.parametrize(
    "section",
    [
        {"enabled": True, "key_id": "0" * 16},
        {"enabled": True, "key_file": "/k", "key_env": "K", "key_id": "0" * 16},
        {"enabled": True, "key_env": "K"},
        {"enabled": True, "key_env": "K", "key_id": "not-hex"},
        {"enabled": True, "key_env": "K", "key_id": "0" * 16, "key": "secret"},
    ],
)
def test_an_inconsistent_section_is_a_config_error(section: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match="encryption"):
        parse(WorkspaceConfig, {"encryption": section}, source="aifab.yaml")


def test_rewriting_the_section_keeps_every_other_line(tmp_path: Path) -> None:
    text = (
        "# my workspace\nversion: 1\nencryption:   # old comment\n  enabled: true\n  key_file: null\n"
        "  key_env: \"OLD\"\n\n  key_id: \"1111111111111111\"\nsplit:   # keep me\n  seed: 7\n"
    )
    section = EncryptionConfig(enabled=True, key_file="/keys/new key.txt", key_id="2" * 16)
    out = replace_encryption_yaml(text, section)
    assert out.startswith("# my workspace\nversion: 1\nencryption:")
    assert out.endswith("split:   # keep me\n  seed: 7\n") and "OLD" not in out
    assert parse(WorkspaceConfig, yaml.safe_load(out)).encryption == section
    # No section yet: appended.
    assert parse(WorkspaceConfig, yaml.safe_load(replace_encryption_yaml("version: 1", section))).encryption == section

    path = tmp_path / "aifab.yaml"
    path.write_text(text)
    write_encryption_section(path, section)
    assert path.read_text() == out and not list(tmp_path.glob("*.tmp"))
