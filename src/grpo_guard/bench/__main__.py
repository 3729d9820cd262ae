"""``python -m grpo_guard.bench KIND SPEC_JSON``: one measurement child of ``grpo-guard bench``."""

import json
import sys

from .measure import CHILDREN

if len(sys.argv) == 3 and sys.argv[1] in CHILDREN:
    print(json.dumps(CHILDREN[sys.argv[1]](sys.argv[2])))
else:
    print("usage: grpo-guard bench --out DIR", file=sys.stderr)
    sys.exit(2)
