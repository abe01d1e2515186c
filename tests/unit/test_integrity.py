"""Model integrity: every loaded file hashed, the hashed bytes loaded, signatures verified."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from onnx import TensorProto, helper, numpy_helper
from structlog.testing import capture_logs

import stream_scorer.score
from stream_scorer.app import load_schema
from stream_scorer.errors import ConfigurationError
from stream_scorer.integrity import (
    IntegrityPolicy,
    VerifiedModel,
    card_file_hashes,
    external_data_locations,
    read_model_files,
    sign_model_folder,
)
from stream_scorer.model_card import ModelCard, file_sha256
from stream_scorer.model_set import load_model
from stream_scorer.score import OnnxScorer
from stream_scorer.settings import load_settings

REPO_ROOT = Path(__file__).resolve().parents[2]
TEST_MODELS = REPO_ROOT / "tests" / "data" / "models"
READER = load_schema(REPO_ROOT / "schemas" / "transaction.avsc", "reader")
FEATURES = ("amount", "txn_count_1h", "distance_from_home_km", "card_present")
#: Bias of the honest model: sigmoid(-3) = 0.047 on the all-zero canary batch.
HONEST_BIAS = -3.0
#: Bias an attacker writes into the external file: sigmoid(5) = 0.993.
HOSTILE_BIAS = 5.0
WEIGHTS_FILE = "weights.bin"
CANARY = {"features": np.zeros((4, len(FEATURES)), dtype=np.float32)}

MakeModel = Callable[..., Path]


def _weights(bias: float) -> bytes:
    """The external file's bytes: four weights then the bias, float32 little-endian."""
    return np.array([0.001, 0.01, 0.001, 0.1, bias], dtype="<f4").tobytes()


def _graph(bias: float) -> onnx.ModelProto:
    """sigmoid(x @ w + b) on one [N, 4] float input, output 'probabilities' [N, 1]."""
    w = numpy_helper.from_array(np.array([[0.001], [0.01], [0.001], [0.1]], np.float32), "w")
    b = numpy_helper.from_array(np.array([bias], np.float32), "b")
    nodes = [
        helper.make_node("MatMul", ["features", "w"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["probabilities"]),
    ]
    graph = helper.make_graph(
        nodes,
        "canary",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 1])],
        [w, b],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture
def make_model(tmp_path: Path) -> MakeModel:
    """``make_model(name, files=..., external=True)``: a model folder with external weights.

    The card's ``files`` lists every file by default; pass ``files`` to write other hashes
    (``None`` drops the key).
    """

    def make(name: str = "ext", files: Any = "all", external: bool = True) -> Path:
        folder = tmp_path / name / "1"
        folder.mkdir(parents=True)
        model = _graph(HONEST_BIAS)
        if external:
            onnx.save_model(
                model,
                str(folder / "model.onnx"),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=WEIGHTS_FILE,
                size_threshold=0,
            )
        else:
            onnx.save_model(model, str(folder / "model.onnx"))
        card: dict[str, Any] = {
            "name": name,
            "version": "1",
            "input_layout": "tensor",
            "inputs": [{"name": "features", "dtype": "float32"}],
            "feature_order": list(FEATURES),
            "output": {"name": "probabilities"},
            "threshold": 0.5,
        }
        if files == "all":
            files = {p.name: file_sha256(p) for p in sorted(folder.iterdir())}
        if files is not None:
            card["files"] = files
        (folder / "model.json").write_text(json.dumps(card), encoding="utf-8")
        return folder

    return make


def _edit_card(folder: Path, **changes: Any) -> None:
    """Replace card keys; a value of ``None`` deletes the key."""
    card = json.loads((folder / "model.json").read_text(encoding="utf-8"))
    card.update(changes)
    card = {k: v for k, v in card.items() if v is not None}
    (folder / "model.json").write_text(json.dumps(card), encoding="utf-8")


def test_fixture_writes_the_weights_outside_the_graph(make_model: MakeModel) -> None:
    """The fixture's model keeps w and b in weights.bin, read back as the honest bias."""
    folder = make_model()

    assert sorted(p.name for p in folder.iterdir()) == ["model.json", "model.onnx", WEIGHTS_FILE]
    assert (folder / WEIGHTS_FILE).read_bytes() == _weights(HONEST_BIAS)
    assert external_data_locations((folder / "model.onnx").read_bytes()) == [WEIGHTS_FILE]


def test_swapped_external_data_moves_the_score_when_loaded_by_path(make_model: MakeModel) -> None:
    """The reproduction: a session opened from the path follows a swapped weights file."""
    folder = make_model()
    (before,) = ort.InferenceSession(str(folder / "model.onnx")).run(None, CANARY)
    (folder / WEIGHTS_FILE).write_bytes(_weights(HOSTILE_BIAS))
    (after,) = ort.InferenceSession(str(folder / "model.onnx")).run(None, CANARY)

    assert round(float(before.max()), 3) == 0.047
    assert round(float(after.max()), 3) == 0.993


def test_swapped_external_data_is_refused(make_model: MakeModel) -> None:
    """A weights file that differs from the card's hash is refused, naming the file."""
    folder = make_model()
    assert OnnxScorer(ModelCard.load(folder)).score(CANARY).max() == pytest.approx(0.0474, 1e-3)
    (folder / WEIGHTS_FILE).write_bytes(_weights(HOSTILE_BIAS))

    with pytest.raises(ConfigurationError, match=r"sha256 of .*weights\.bin is [0-9a-f]{64}"):
        OnnxScorer(ModelCard.load(folder))


def test_swap_after_hashing_has_no_effect(
    make_model: MakeModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A weights file swapped between the hash check and the session load does not serve."""
    folder = make_model()
    real = stream_scorer.score.read_model_files

    def read_then_swap(card: ModelCard, policy: IntegrityPolicy | None = None) -> VerifiedModel:
        verified = real(card, policy)
        (folder / WEIGHTS_FILE).write_bytes(_weights(HOSTILE_BIAS))
        return verified

    monkeypatch.setattr(stream_scorer.score, "read_model_files", read_then_swap)
    scorer = OnnxScorer(ModelCard.load(folder))

    assert (folder / WEIGHTS_FILE).read_bytes() == _weights(HOSTILE_BIAS)
    assert round(float(scorer.score(CANARY).max()), 3) == 0.047
    monkeypatch.undo()
    with pytest.raises(ConfigurationError, match="sha256 of"):
        OnnxScorer(ModelCard.load(folder))


def test_canary_score_of_a_loaded_model_is_the_honest_one(make_model: MakeModel) -> None:
    """Through load_model (bind, warm up) the external-data model serves its card's weights."""
    with capture_logs() as logs:
        loaded = load_model(make_model(), READER)

    (event,) = [e for e in logs if e["event"] == "model_loaded"]
    assert round(event["canary_score"], 3) == 0.047
    assert set(loaded.scorer.file_hashes) == {"model.onnx", WEIGHTS_FILE}  # type: ignore[attr-defined]


def test_external_file_missing_from_the_card_is_refused(make_model: MakeModel) -> None:
    """A file the graph loads but the card does not list is refused, even if its hash is fine."""
    folder = make_model(files="all")
    _edit_card(folder, files={"model.onnx": file_sha256(folder / "model.onnx")})

    with pytest.raises(ConfigurationError, match=r"the graph loads 'weights\.bin', which the"):
        OnnxScorer(ModelCard.load(folder))


def test_card_without_hashes_is_refused(make_model: MakeModel) -> None:
    """A card with neither 'files' nor 'sha256' is refused while verification is on."""
    folder = make_model(files=None, external=False)

    with pytest.raises(ConfigurationError, match="lists no sha256 for its files"):
        OnnxScorer(ModelCard.load(folder))


def test_card_without_hashes_loads_with_a_warning_when_verification_is_off(
    make_model: MakeModel,
) -> None:
    """verify_sha256 = false loads an unlisted model and says so at warning level."""
    folder = make_model(files=None)

    with capture_logs() as logs:
        scorer = OnnxScorer(ModelCard.load(folder), verify_sha256=False)

    assert round(float(scorer.score(CANARY).max()), 3) == 0.047
    (warning,) = [e for e in logs if e["event"] == "model_hash_check_off"]
    assert warning["log_level"] == "warning"


def test_shipped_card_without_hash_is_refused(tmp_path: Path) -> None:
    """The issue's case: a test model with its hash keys removed no longer passes."""
    folder = tmp_path / "tensor" / "1"
    shutil.copytree(TEST_MODELS / "tensor" / "1", folder)
    _edit_card(folder, sha256=None, files=None)

    with pytest.raises(ConfigurationError, match="lists no sha256"):
        OnnxScorer(ModelCard.load(folder))


def test_older_card_with_only_sha256_still_loads(make_model: MakeModel) -> None:
    """A card written before 'files' existed is read as the hash of model.onnx."""
    folder = make_model(files=None, external=False)
    _edit_card(folder, sha256=file_sha256(folder / "model.onnx"))
    card = ModelCard.load(folder)

    assert card_file_hashes(card) == {"model.onnx": file_sha256(folder / "model.onnx")}
    assert OnnxScorer(card).file_hashes == card_file_hashes(card)


@pytest.mark.parametrize(
    ("files", "fragment"),
    [
        ({}, "card key 'files' must be a non-empty object"),
        (["model.onnx"], "card key 'files' must be a non-empty object"),
        ({"model.onnx": "ABC"}, "the hash of 'model.onnx' is not 64 lowercase hex digits"),
        ({"model.onnx": 7}, "the hash of 'model.onnx' is not 64 lowercase hex digits"),
    ],
    ids=["empty", "list", "short", "number"],
)
def test_malformed_hashes_are_refused(files: Any, fragment: str, make_model: MakeModel) -> None:
    """A 'files' value that is not a map of hex sha256 names the key."""
    folder = make_model(files=files, external=False)

    with pytest.raises(ConfigurationError, match=fragment):
        read_model_files(ModelCard.load(folder))


def test_sha256_and_files_that_disagree_are_refused(make_model: MakeModel) -> None:
    """Two different hashes for model.onnx in one card: neither is trusted."""
    folder = make_model(external=False)
    _edit_card(folder, sha256="0" * 64)

    with pytest.raises(ConfigurationError, match="'sha256' and 'files' disagree"):
        read_model_files(ModelCard.load(folder))


@pytest.mark.parametrize("location", ["../outside.bin", "/etc/passwd", "sub/../../x.bin"])
def test_external_data_outside_the_folder_is_refused(location: str, make_model: MakeModel) -> None:
    """An external location that leaves the model folder is refused before it is opened."""
    folder = make_model()
    model = onnx.load_model(str(folder / "model.onnx"), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    (folder / "model.onnx").write_bytes(model.SerializeToString())

    with pytest.raises(ConfigurationError, match="only files inside the model folder"):
        read_model_files(ModelCard.load(folder), IntegrityPolicy(verify_sha256=False))


def test_missing_external_file_is_a_clear_error(make_model: MakeModel) -> None:
    """A weights file the graph names but the folder lacks is refused, naming it."""
    folder = make_model()
    (folder / WEIGHTS_FILE).unlink()

    with pytest.raises(ConfigurationError, match=r"cannot read external data file .*weights\.bin"):
        OnnxScorer(ModelCard.load(folder))


def test_external_reference_not_handed_over_is_refused_by_onnxruntime(
    make_model: MakeModel,
) -> None:
    """Defence in depth: with the in-memory table set, onnxruntime opens no other file."""
    folder = make_model()
    verified = read_model_files(ModelCard.load(folder))
    partial = VerifiedModel(verified.model_bytes, {"other.bin": b"\0" * 20}, verified.hashes)

    with pytest.raises(Exception, match=r"weights\.bin not found from the table"):
        ort.InferenceSession(verified.model_bytes, partial.session_options(ort.SessionOptions()))


# --- signatures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def key_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A fresh P-256 key pair as PEM files: (private, public)."""
    folder = tmp_path_factory.mktemp("keys")
    key = ec.generate_private_key(ec.SECP256R1())
    private = folder / "signing.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public = folder / "signing.pub"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


@pytest.fixture
def signed_copy(tmp_path: Path, key_pair: tuple[Path, Path]) -> Path:
    """A signed copy of tests/data/models/tensor/1."""
    folder = tmp_path / "signed" / "1"
    shutil.copytree(TEST_MODELS / "tensor" / "1", folder)
    sign_model_folder(folder, key_pair[0])
    return folder


def test_signed_model_verifies(signed_copy: Path, key_pair: tuple[Path, Path]) -> None:
    """A folder signed with the key pair loads under 'require' and is marked signed."""
    policy = IntegrityPolicy(signature="require", public_key=key_pair[1])

    scorer = OnnxScorer(ModelCard.load(signed_copy), integrity=policy)

    assert scorer.is_signed is True


def test_signed_model_with_external_data_verifies(
    make_model: MakeModel, key_pair: tuple[Path, Path]
) -> None:
    """The signature covers external data too; a signed external-data model loads."""
    folder = make_model()
    sign_model_folder(folder, key_pair[0])
    policy = IntegrityPolicy(signature="require", public_key=key_pair[1])

    assert read_model_files(ModelCard.load(folder), policy).is_signed is True


def test_tampered_card_of_a_signed_model_is_refused(
    signed_copy: Path, key_pair: tuple[Path, Path]
) -> None:
    """A changed card (threshold lowered, hashes intact) fails the signature."""
    _edit_card(signed_copy, threshold=0.01)
    policy = IntegrityPolicy(signature="verify", public_key=key_pair[1])

    with pytest.raises(ConfigurationError, match=r"signature .*model\.sig does not verify"):
        OnnxScorer(ModelCard.load(signed_copy), integrity=policy)


def test_added_file_in_a_signed_folder_is_refused(
    signed_copy: Path, key_pair: tuple[Path, Path]
) -> None:
    """A file added to a signed folder fails the signature: nothing unsigned rides along."""
    (signed_copy / "extra.onnx").write_bytes(b"planted")
    policy = IntegrityPolicy(signature="verify", public_key=key_pair[1])

    with pytest.raises(ConfigurationError, match="does not verify"):
        read_model_files(ModelCard.load(signed_copy), policy)


def test_signature_from_another_key_is_refused(signed_copy: Path, tmp_path: Path) -> None:
    """A valid signature by a key other than the configured one is refused."""
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    public = tmp_path / "other.pub"
    public.write_bytes(
        other.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )

    with pytest.raises(ConfigurationError, match="does not verify"):
        read_model_files(
            ModelCard.load(signed_copy), IntegrityPolicy(signature="verify", public_key=public)
        )


def test_card_swapped_during_verification_is_refused(
    signed_copy: Path, key_pair: tuple[Path, Path]
) -> None:
    """A card read tampered, then put back before the folder is verified, is still refused."""
    original = (signed_copy / "model.json").read_bytes()
    _edit_card(signed_copy, threshold=0.01)
    card = ModelCard.load(signed_copy)
    (signed_copy / "model.json").write_bytes(original)

    with pytest.raises(ConfigurationError, match=r"model\.json changed while the folder was verif"):
        read_model_files(card, IntegrityPolicy(signature="verify", public_key=key_pair[1]))


def test_unsigned_model_is_refused_in_strict_mode(
    make_model: MakeModel, key_pair: tuple[Path, Path]
) -> None:
    """signature = 'require' refuses a folder without model.sig."""
    policy = IntegrityPolicy(signature="require", public_key=key_pair[1])

    with pytest.raises(ConfigurationError, match="'require' refuses unsigned models"):
        read_model_files(ModelCard.load(make_model()), policy)


def test_unsigned_model_loads_with_a_warning_in_verify_mode(
    make_model: MakeModel, key_pair: tuple[Path, Path]
) -> None:
    """signature = 'verify' loads an unsigned folder and logs a warning."""
    policy = IntegrityPolicy(signature="verify", public_key=key_pair[1])

    with capture_logs() as logs:
        verified = read_model_files(ModelCard.load(make_model()), policy)

    assert verified.is_signed is False
    assert [e["log_level"] for e in logs if e["event"] == "model_unsigned"] == ["warning"]


def test_signature_policy_needs_a_public_key(tmp_path: Path) -> None:
    """model.signature other than 'off' without model.public_key is a configuration error."""
    config = tmp_path / "scorer.toml"
    config.write_text('[model]\nsignature = "require"\n', encoding="utf-8")

    with pytest.raises(ConfigurationError, match=r"model\.public_key is required"):
        load_settings(config, environ={})
    with pytest.raises(ConfigurationError, match=r"model\.public_key is required"):
        IntegrityPolicy(signature="verify")


def test_settings_reach_the_loaded_model(
    signed_copy: Path, key_pair: tuple[Path, Path], tmp_path: Path
) -> None:
    """The [model] signature settings are applied by the service's own model loader."""
    from stream_scorer.app import load_model as load_configured_model  # noqa: PLC0415

    config = tmp_path / "scorer.toml"
    config.write_text(
        f'[model]\npath = "{signed_copy}"\nsignature = "require"\npublic_key = "{key_pair[1]}"\n',
        encoding="utf-8",
    )
    loaded = load_configured_model(load_settings(config, environ={}), READER)
    assert loaded.scorer.is_signed is True  # type: ignore[attr-defined]

    (signed_copy / "model.sig").unlink()
    with pytest.raises(ConfigurationError, match="refuses unsigned models"):
        load_configured_model(load_settings(config, environ={}), READER)


# --- through the command line -----------------------------------------------------------------


def _check(config: Path) -> subprocess.CompletedProcess[str]:
    """Run ``stream-scorer check`` in a child process, as an operator would."""
    return subprocess.run(
        [sys.executable, "-m", "stream_scorer", "config", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO_ROOT,
    )


@pytest.mark.slow
def test_check_command_refuses_swapped_external_data(make_model: MakeModel, tmp_path: Path) -> None:
    """`stream-scorer check` exits 2 naming the swapped weights file; the honest copy passes."""
    folder = make_model()
    config = tmp_path / "scorer.toml"
    config.write_text(f'[model]\npath = "{folder}"\n', encoding="utf-8")
    assert _check(config).returncode == 0

    (folder / WEIGHTS_FILE).write_bytes(_weights(HOSTILE_BIAS))
    result = _check(config)

    assert result.returncode == 2
    assert re.search(r"sha256 of \S*weights\.bin is [0-9a-f]{64}", result.stderr + result.stdout)


@pytest.mark.slow
def test_check_command_refuses_an_unsigned_model_in_strict_mode(
    make_model: MakeModel, key_pair: tuple[Path, Path], tmp_path: Path
) -> None:
    """With signature = 'require', `stream-scorer check` exits 2 on an unsigned folder."""
    folder = make_model()
    config = tmp_path / "scorer.toml"
    config.write_text(
        f'[model]\npath = "{folder}"\nsignature = "require"\npublic_key = "{key_pair[1]}"\n',
        encoding="utf-8",
    )
    assert _check(config).returncode == 2

    sign_model_folder(folder, key_pair[0])
    assert _check(config).returncode == 0
