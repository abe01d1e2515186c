"""Model integrity: hash every file a model loads, load exactly those bytes, check signatures.

A model folder is trusted only as far as its card (``model.json``) vouches for it. The card lists
the sha256 of every file the model loads, ``model.onnx`` and each ONNX external-data file,
under ``files`` (``{"model.onnx": "<sha256>", "weights.bin": "<sha256>"}``); an older card's
single ``sha256`` still covers ``model.onnx`` alone. :func:`read_model_files` reads each file
once, hashes those bytes and hands the same bytes to onnxruntime (:meth:`VerifiedModel.
session_options`): no file is opened again after it was checked, so a file swapped between the
check and the load cannot serve. External data is given to onnxruntime from memory, and
onnxruntime refuses any external reference missing from that table, so a graph cannot read a
file the check did not see.

Refused, each with :class:`~stream_scorer.errors.ConfigurationError`:

* a card with no hashes, unless verification is explicitly off (``model.verify_sha256 =
  false``, logged as a warning on every load);
* a file the graph loads that the card does not list, or whose sha256 differs;
* an external-data location outside the model folder (absolute, or climbing out with ``..``).

Signatures (optional): ``model.sig`` beside the card, a sigstore bundle in the OpenSSF
model-transparency format made by the ``model-signing`` package with a key pair
(``model_signing sign key --private_key KEY --signature DIR/model.sig DIR``, or
:func:`sign_model_folder`).
It signs the sha256 of every file in the folder, the card included. Policy ``off`` skips it,
``verify`` checks a signature when one is present (an unsigned model loads with a warning), and
``require`` refuses an unsigned model. After the signature verifies, the signed digests are
compared with the bytes actually loaded (card, model and external data), so a file swapped
while the folder was being verified is caught too.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal

import structlog

from stream_scorer.errors import ConfigurationError

if TYPE_CHECKING:
    import onnxruntime as ort

    from stream_scorer.model_card import ModelCard

__all__ = [
    "MODEL_FILE",
    "SIGNATURE_FILE",
    "IntegrityPolicy",
    "SignaturePolicy",
    "VerifiedModel",
    "card_file_hashes",
    "external_data_locations",
    "read_model_files",
    "sign_model_folder",
    "verify_signature",
]

log = structlog.get_logger(__name__)

SignaturePolicy = Literal["off", "verify", "require"]

#: The graph file of every model folder (the card's ``model_file``).
MODEL_FILE = "model.onnx"
#: Where a folder's signature lives: the name model-signing's own CLI suggests.
SIGNATURE_FILE = "model.sig"
#: The card file; signed with the rest of the folder.
CARD_FILE = "model.json"
#: A hex sha256, as cards and signatures write it.
SHA256_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class IntegrityPolicy:
    """How strictly a model folder is checked before it loads (the ``model`` settings)."""

    #: Refuse a card without hashes and any file whose hash differs; off only on purpose.
    verify_sha256: bool = True
    signature: SignaturePolicy = "off"
    #: PEM public key that signatures are verified with; required unless ``signature`` is off.
    public_key: Path | None = None

    def __post_init__(self) -> None:
        """A signature policy needs a key to check against."""
        if self.signature not in ("off", "verify", "require"):
            msg = f"model.signature must be 'off', 'verify' or 'require', got {self.signature!r}"
            raise ConfigurationError(msg)
        if self.signature != "off" and self.public_key is None:
            msg = f"model.public_key is required when model.signature is {self.signature!r}"
            raise ConfigurationError(msg)


@dataclass(frozen=True, slots=True)
class VerifiedModel:
    """The bytes of one model, read once and checked: what onnxruntime is given, nothing else."""

    model_bytes: bytes = field(repr=False)
    #: External-data file contents by the location the graph names them with.
    external: Mapping[str, bytes] = field(repr=False)
    #: sha256 of every loaded file (``model.onnx`` and the external locations).
    hashes: Mapping[str, str]
    #: True when a signature was verified against these bytes.
    is_signed: bool = False

    def session_options(self, options: ort.SessionOptions) -> ort.SessionOptions:
        """Hand the external data to onnxruntime from memory; returns ``options``.

        onnxruntime copies what it needs while the session is created, and refuses any
        external location missing from this table instead of opening a file.
        """
        if self.external:
            names = list(self.external)
            buffers = [self.external[n] for n in names]
            options.add_external_initializers_from_files_in_memory(
                names, buffers, [len(b) for b in buffers]
            )
        return options


def card_file_hashes(card: ModelCard) -> dict[str, str] | None:
    """The sha256 per file the card vouches for, or None when it lists none.

    ``files`` wins; a card with only the older ``sha256`` covers ``model.onnx``.

    Raises:
        ConfigurationError: ``files`` is not an object of 64-hex-digit strings (key named).
    """
    raw = card.raw
    label = f"model {card.name}/{card.version}"
    files = raw.get("files")
    if files is None:
        single = raw.get("sha256")
        if single is None:
            return None
        files = {MODEL_FILE: single}
        key = "sha256"
    else:
        key = "files"
    if not isinstance(files, Mapping) or not files:
        msg = f"{label}: card key {key!r} must be a non-empty object of file name to sha256"
        raise ConfigurationError(msg)
    hashes: dict[str, str] = {}
    for name, digest in files.items():
        if not isinstance(digest, str) or not SHA256_HEX.fullmatch(digest):
            msg = f"{label}: card key {key!r}: the hash of {name!r} is not 64 lowercase hex digits"
            raise ConfigurationError(msg)
        hashes[str(name)] = digest
    single = raw.get("sha256")
    if key == "files" and single is not None and single != hashes.get(MODEL_FILE):
        # Two answers for one file: trust neither.
        msg = f"{label}: card keys 'sha256' and 'files' disagree on the hash of {MODEL_FILE}"
        raise ConfigurationError(msg)
    return hashes


def external_data_locations(model_bytes: bytes, label: str = "model") -> list[str]:
    """The external-data files an ONNX graph loads, in first-use order, without the weights.

    Every tensor is visited: initializers, sparse initializers, ``Constant`` and other node
    attributes, and the subgraphs of ``If``/``Loop``/``Scan`` and local functions.

    Raises:
        ConfigurationError: The bytes are not an ONNX model, or a location leaves the folder.
    """
    # Imported here: onnx is only needed while a model loads, not on the scoring path.
    import onnx  # noqa: PLC0415
    from google.protobuf.message import DecodeError  # noqa: PLC0415

    try:
        model = onnx.ModelProto.FromString(model_bytes)
    except (DecodeError, ValueError, RuntimeError) as exc:
        msg = f"{label}: cannot load {MODEL_FILE}: not an ONNX model ({exc})"
        raise ConfigurationError(msg) from exc
    locations: dict[str, None] = {}
    for tensor in _all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        entries = {e.key: e.value for e in tensor.external_data}
        location = entries.get("location", "")
        path = PurePosixPath(location.replace("\\", "/"))
        if not location or path.is_absolute() or ".." in path.parts or ":" in location:
            msg = (
                f"{label}: tensor {tensor.name!r} names external data {location!r}; only "
                "files inside the model folder are allowed"
            )
            raise ConfigurationError(msg)
        locations[location] = None
    return list(locations)


def _all_tensors(model: Any) -> list[Any]:
    """Every TensorProto of a model, subgraphs and functions included."""
    tensors: list[Any] = []
    graphs = [model.graph]
    node_lists = [f.node for f in model.functions]
    while graphs or node_lists:
        if graphs:
            graph = graphs.pop()
            tensors.extend(graph.initializer)
            for sparse in graph.sparse_initializer:
                tensors.extend((sparse.values, sparse.indices))
            node_lists.append(graph.node)
            continue
        for node in node_lists.pop():
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    tensors.append(attribute.t)
                tensors.extend(attribute.tensors)
                if attribute.HasField("sparse_tensor"):
                    tensors.extend(
                        (attribute.sparse_tensor.values, attribute.sparse_tensor.indices)
                    )
                for sparse in attribute.sparse_tensors:
                    tensors.extend((sparse.values, sparse.indices))
                if attribute.HasField("g"):
                    graphs.append(attribute.g)
                graphs.extend(attribute.graphs)
    return tensors


def _read(path: Path, label: str, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        msg = f"{label}: cannot read {what} {path}: {exc.strerror or exc}"
        raise ConfigurationError(msg) from exc


def read_model_files(card: ModelCard, policy: IntegrityPolicy | None = None) -> VerifiedModel:
    """Read, hash and check every file the model loads; return the bytes to load.

    Args:
        card: The model card; its folder holds ``model.onnx`` and any external data.
        policy: What to check; the default checks hashes and no signature.

    Raises:
        ConfigurationError: A missing, unlisted or changed file, a card without hashes while
            verification is on, a bad or (under ``require``) missing signature.
    """
    policy = policy or IntegrityPolicy()
    label = f"model {card.name}/{card.version}"
    folder = card.path
    model_bytes = _read(folder / MODEL_FILE, label, "model file")
    hashes = {MODEL_FILE: hashlib.sha256(model_bytes).hexdigest()}
    expected: dict[str, str] | None = None
    if policy.verify_sha256:
        expected = _expected_hashes(card, label)
        # The graph file first: a changed model.onnx is refused before its bytes are parsed.
        _check_hash(card, MODEL_FILE, hashes[MODEL_FILE], expected, label)
    else:
        log.warning(
            "model_hash_check_off",
            model=card.name,
            version=card.version,
            hint="model.verify_sha256 is false: the model's files are loaded unchecked",
        )
    external: dict[str, bytes] = {}
    for location in external_data_locations(model_bytes, label):
        external[location] = data = _read(folder / location, label, "external data file")
        hashes[location] = hashlib.sha256(data).hexdigest()
        if expected is not None:
            _check_hash(card, location, hashes[location], expected, label)
    is_signed = False
    if policy.signature != "off":
        assert policy.public_key is not None  # noqa: S101  # IntegrityPolicy guarantees it
        is_signed = verify_signature(card, hashes, policy.public_key, policy.signature == "require")
    return VerifiedModel(model_bytes, external, hashes, is_signed)


def _expected_hashes(card: ModelCard, label: str) -> dict[str, str]:
    expected = card_file_hashes(card)
    if expected is None:
        msg = (
            f"{label}: the model card lists no sha256 for its files ('files'); refusing a model "
            "nobody vouched for (set model.verify_sha256 = false to load it unchecked)"
        )
        raise ConfigurationError(msg)
    return expected


def _check_hash(
    card: ModelCard, name: str, digest: str, expected: Mapping[str, str], label: str
) -> None:
    if name not in expected:
        msg = (
            f"{label}: the graph loads {name!r}, which the model card does not list under "
            "'files'; refusing a file that is not the one documented"
        )
        raise ConfigurationError(msg)
    if digest != expected[name]:
        msg = (
            f"{label}: sha256 of {card.path / name} is {digest}, the model card says "
            f"{expected[name]}; refusing a model that is not the one documented"
        )
        raise ConfigurationError(msg)


def verify_signature(
    card: ModelCard, loaded: Mapping[str, str], public_key: Path, required: bool
) -> bool:
    """Verify ``model.sig`` over the folder, then bind it to the bytes that were loaded.

    Args:
        card: The card (its folder is verified; its own bytes' hash is compared too).
        loaded: sha256 of each loaded file, as :func:`read_model_files` computed them.
        public_key: PEM public key of the signer.
        required: Refuse an unsigned folder instead of warning.

    Returns:
        True when the folder is signed and verified; False when unsigned and not required.

    Raises:
        ConfigurationError: Unsigned while required, a signature that does not verify, or
            signed digests that differ from the loaded bytes.
    """
    label = f"model {card.name}/{card.version}"
    folder = card.path
    signature_path = folder / SIGNATURE_FILE
    if not signature_path.exists():
        if required:
            msg = (
                f"{label}: no signature {signature_path}; model.signature = 'require' refuses "
                "unsigned models"
            )
            raise ConfigurationError(msg)
        log.warning("model_unsigned", model=card.name, version=card.version, folder=str(folder))
        return False
    # The bundle is read once: the copy that is verified is the copy whose digests are used.
    bundle = _read(signature_path, label, "signature")
    key = _read(public_key, label, "model.public_key")
    try:
        # Imported here: an optional extra (stream-scorer[signing]) with a large dependency tree.
        from model_signing import hashing, verifying  # noqa: PLC0415
    except ImportError as exc:
        msg = (
            f"model.signature is {'require' if required else 'verify'} but the model-signing "
            "package is not installed (pip install 'stream-scorer[signing]')"
        )
        raise ConfigurationError(msg) from exc
    with tempfile.TemporaryDirectory(prefix="stream-scorer-sig-") as scratch:
        bundle_copy = Path(scratch) / SIGNATURE_FILE
        bundle_copy.write_bytes(bundle)
        key_copy = Path(scratch) / "key.pem"
        key_copy.write_bytes(key)
        hashing_config = hashing.Config().set_ignored_paths(paths=[signature_path])
        try:
            verifying.Config().use_elliptic_key_verifier(public_key=key_copy).set_hashing_config(
                hashing_config
            ).verify(folder, bundle_copy)
        except Exception as exc:  # model-signing raises ValueError and library-specific errors
            msg = f"{label}: signature {signature_path} does not verify: {exc}"
            raise ConfigurationError(msg) from exc
    signed = _signed_digests(bundle, label)
    card_digest = card.card_sha256
    checks = {**loaded, **({CARD_FILE: card_digest} if card_digest else {})}
    for name, digest in checks.items():
        if signed.get(name) != digest:
            msg = (
                f"{label}: {name} changed while the folder was verified (signed sha256 "
                f"{signed.get(name)}, loaded {digest}); refusing it"
            )
            raise ConfigurationError(msg)
    log.info("model_signature_verified", model=card.name, version=card.version, files=len(signed))
    return True


def _signed_digests(bundle: bytes, label: str) -> dict[str, str]:
    """File name to sha256 from a verified model-signing bundle's in-toto statement."""
    try:
        envelope = json.loads(bundle)["dsseEnvelope"]
        statement = json.loads(base64.b64decode(envelope["payload"]))
        resources = statement["predicate"]["resources"]
        return {
            str(r["name"]): str(r["digest"]) for r in resources if r.get("algorithm") == "sha256"
        }
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        msg = f"{label}: signature bundle has no sha256 manifest: {exc}"
        raise ConfigurationError(msg) from exc


def sign_model_folder(folder: Path, private_key: Path) -> Path:
    """Sign every file of ``folder`` into ``folder/model.sig`` with a PEM EC private key.

    The signing side of :func:`verify_signature`, for release tooling and tests.

    Returns:
        The signature path.
    """
    from model_signing import hashing, signing  # noqa: PLC0415

    signature_path = folder / SIGNATURE_FILE
    # A re-sign must not hash the previous signature into the new manifest.
    hashing_config = hashing.Config().set_ignored_paths(paths=[signature_path])
    signing.Config().use_elliptic_key_signer(private_key=private_key).set_hashing_config(
        hashing_config
    ).sign(folder, signature_path)
    return signature_path
