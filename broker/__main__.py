import signal
import sys

# A SIGHUP (reload) that arrives while the broker is still starting must not kill it: the
# config is read at start anyway. The running broker installs its own handler.
signal.signal(signal.SIGHUP, signal.SIG_IGN)

from broker.cli import main  # noqa: E402

sys.exit(main())
