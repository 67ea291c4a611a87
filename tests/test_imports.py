"""What the API process needs imports no torch: it starts fast and light."""

import subprocess
import sys

from cluster import ROOT


def test_the_api_imports_no_torch():
    code = (
        "import sys, api\n"
        "from arceus.settings import Settings\n"
        "app = api.create_app(Settings(redis_url='redis://127.0.0.1:9/0'))\n"  # builds everything, connects to nothing
        "assert len(app.url_map._rules) > 10\n"
        "import arceus.config, arceus.keys, arceus.events, arceus.liveness, arceus.plan.runspec, arceus.control.jobs\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
