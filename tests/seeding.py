"""The test run's seed: fresh each run, printed in pytest's header, replayed with SA_TEST_SEED=N.
A module of its own, so tests import it by a name no conftest.py shares."""

import os
import secrets

SEED = int(os.environ.get("SA_TEST_SEED", secrets.randbelow(2**31)))
