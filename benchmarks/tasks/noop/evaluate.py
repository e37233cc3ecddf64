import json
import os
import random

with open(os.path.join(os.environ["THREADLAB_OUT"], "x.json")) as f:
    x = float(json.load(f))
noise = random.Random(int(os.environ["THREADLAB_SEED"])).gauss(0, 0.01)
with os.fdopen(int(os.environ["THREADLAB_RESULT_FD"]), "w") as out:
    json.dump({"metric": (x - 0.3) ** 2 + noise}, out)
