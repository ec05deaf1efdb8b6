"""``tests/test_socketio.py``'s tests again with labserver's fast tier off (conftest.py)."""

import conftest

conftest.fast_off_copy("test_socketio", globals())
