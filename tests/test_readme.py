"""The README's commands (setup, demo, scoring, masks, porting, export), run as written (training shortened to 40 iterations, so the snapshot name in the
score/infer commands is rewritten from _iter_2000 to _iter_40)."""
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def readme_blocks():
    text = (REPO / "README.md").read_text()
    return [b.replace("\\\n", " ") for b in re.findall(r"```bash\n(.*?)```", text, re.S)]


def test_readme_opens_with_setup_and_test_commands():
    first = readme_blocks()[0].strip().splitlines()
    assert first[0] == 'pip install torch==2.13.0 && pip install -e ".[test]"'
    assert first[1] == "python -m pytest -x -q"
    ci = (REPO / ".ci" / "run").read_text()
    assert "pip install --quiet torch==2.13.0" in ci and "python -m pytest -x -q" in ci


def test_demo_train_score_infer_commands(tmp_path):
    (tmp_path / "prototxt").mkdir()
    shutil.copytree(REPO / "prototxt" / "demo", tmp_path / "prototxt" / "demo")
    (tmp_path / "solvers").mkdir()
    shutil.copy(REPO / "solvers" / "demo.prototxt", tmp_path / "solvers")
    blocks = readme_blocks()
    train = blocks[1].strip()
    assert train == "python tools/train.py --solver solvers/demo.prototxt"
    commands = [train + " --max-iter 40"] + [l for b in blocks[2:4] for l in b.strip().splitlines() if l.strip()]
    for cmd in commands:
        cmd = cmd.replace("_iter_2000", "_iter_40")
        argv = shlex.split(cmd)
        assert argv[0] == "python"
        if argv[1].startswith("tools/"):
            argv[1] = str(REPO / argv[1])
        r = subprocess.run([sys.executable] + argv[1:], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                           env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
        assert r.returncode == 0, f"{cmd}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
        if "score.py" in cmd:
            assert re.search(r"^mean IU [0-9.]+$", r.stdout, re.M), r.stdout
    pngs = sorted((tmp_path / "masks" / "color").glob("*.png"))
    assert len(pngs) == 50
    assert (tmp_path / "demo.pt").exists() and (tmp_path / "demo.onnx").exists()
