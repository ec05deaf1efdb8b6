"""``tests/test_ws.py``'s tests again with labserver's fast tier off (conftest.py)."""

import conftest

conftest.fast_off_copy("test_ws", globals())
