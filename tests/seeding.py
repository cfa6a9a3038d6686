"""The test run's seed: fresh each run, printed in pytest's header, replayed with SA_TEST_SEED=N.
A module of its own, so tests import it by a name no conftest.py shares."""

import os
import secrets

SEED = int(os.environ.get("SA_TEST_SEED", secrets.randbelow(2**31)))
# pytest-xdist's workers are started with this environment: every worker draws the run's seed
# (and so collects the same parameters, RANDOM_STEPS and the like), as do the tests' subprocesses.
os.environ["SA_TEST_SEED"] = str(SEED)
