"""Reference NIQE and BRISQUE values for tests/test_nr_metrics.py, from the upstream code itself.

    pip download --no-deps --no-binary :all: basicsr==1.4.2 -d /tmp/nr
    pip download --no-deps brisque==0.2.0 -d /tmp/nr
    pip install --no-deps --target /tmp/nr/libsvm libsvm-official      # the brisque package predicts through libsvm
    PYTHONPATH=/tmp/nr/libsvm python benchmarks/nr_metrics_reference.py \
        --basicsr /tmp/nr/basicsr-1.4.2.tar.gz --brisque /tmp/nr/brisque-0.2.0-py3-none-any.whl

- NIQE: BasicSR 1.4.2's numpy NIQE (`basicsr/metrics/niqe.py`, which reproduces MATLAB R2021a's niqe_release on its
  test image: 5.7296) with its own `niqe_pris_params.npz`, on the grey image (convert_to='gray': MATLAB's rgb2gray
  weights, as pyiqa's Y of YIQ). Its modules are loaded one by one from the sdist (basicsr's package __init__
  imports torchvision names that no longer exist); one fix: SciPy >= 1.15 has no `scipy.ndimage.filters`.
- BRISQUE: the brisque 0.2.0 package's `BRISQUE().score` on the uint8 RGB array, libsvm's own prediction; one fix
  for NumPy 2, which refuses float() of the 1-element arrays its features hold.

The test images are the ones tests/test_nr_metrics.py builds (TEST_IMAGES there): the shipped examples, a mosaic
of the four HQ examples and its 2x2 box-averaged, pixel-repeated copy. Writes tests/data/nr_metrics_reference.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tarfile
import tempfile
import types
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
OUT = REPO / "tests" / "data" / "nr_metrics_reference.json"


def basicsr_niqe(root: Path):
    """BasicSR's metrics/niqe.py and the modules it needs, without basicsr/__init__.py."""
    import scipy.ndimage

    try:
        import scipy.ndimage.filters  # noqa: F401
    except ImportError:  # SciPy >= 1.15
        sys.modules["scipy.ndimage.filters"] = scipy.ndimage
    for pkg in ("basicsr", "basicsr.utils", "basicsr.metrics"):
        module = types.ModuleType(pkg)
        module.__path__ = []
        sys.modules[pkg] = module

    def load(name: str, rel: str):
        spec = importlib.util.spec_from_file_location(name, root / "basicsr" / rel)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module

    sys.modules["basicsr.utils"].bgr2ycbcr = load("basicsr.utils.color_util", "utils/color_util.py").bgr2ycbcr
    load("basicsr.utils.registry", "utils/registry.py")
    load("basicsr.utils.matlab_functions", "utils/matlab_functions.py")
    load("basicsr.metrics.metric_util", "metrics/metric_util.py")
    return load("basicsr.metrics.niqe", "metrics/niqe.py")


def brisque_package(root: Path):
    sys.path.insert(0, str(root))
    from brisque import BRISQUE

    class FixedBRISQUE(BRISQUE):
        def scale_features(self, features):  # the package's, with float() of 1-element arrays made NumPy-2 safe
            f = np.array([np.asarray(v, dtype=np.float64).item() for v in features])
            lo = np.array(self.scale_params["min_"], dtype=np.float64)
            hi = np.array(self.scale_params["max_"], dtype=np.float64)
            return -1 + (2.0 / (hi - lo) * (f - lo))

    return FixedBRISQUE(url=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--basicsr", type=Path, required=True)
    parser.add_argument("--brisque", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    from tests.test_nr_metrics import NIQE_MIN, TEST_IMAGES

    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(args.basicsr) as tar:
            tar.extractall(tmp, filter="data")
        with zipfile.ZipFile(args.brisque) as zf:
            zf.extractall(Path(tmp) / "brisque_whl")
        niqe = basicsr_niqe(Path(tmp) / "basicsr-1.4.2")
        brisque = brisque_package(Path(tmp) / "brisque_whl")
        values = {}
        for name, make in TEST_IMAGES.items():
            rgb = make()
            entry = {"size": [rgb.shape[1], rgb.shape[0]], "brisque": float(brisque.score(rgb))}
            if min(rgb.shape[:2]) >= NIQE_MIN:
                bgr = rgb[..., ::-1].astype(np.float32)
                entry["niqe"] = float(niqe.calculate_niqe(bgr, 0, input_order="HWC", convert_to="gray"))
            values[name] = entry
            print(name, entry)
    doc = {
        "what": "reference NIQE (BasicSR 1.4.2's numpy NIQE and its params) and BRISQUE (brisque 0.2.0 + libsvm)",
        "command": "python benchmarks/nr_metrics_reference.py --basicsr basicsr-1.4.2.tar.gz "
        "--brisque brisque-0.2.0-py3-none-any.whl",
        "values": values,
    }
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
