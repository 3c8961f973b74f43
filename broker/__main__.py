import signal
import sys

# A SIGHUP (reload) that arrives while the broker is still starting must not kill it: the
# config is read at start anyway. The running broker installs its own handler.
signal.signal(signal.SIGHUP, signal.SIG_IGN)

if sys.argv[1:2] == ["audit"]:
    # The auditor's commands load only what they use (no server, no logging stack): a
    # lookup in the audit store answers in well under a second, import time included.
    from broker.audit.cli import main as audit_main

    sys.exit(audit_main(sys.argv[1:]))

from broker.cli import main  # noqa: E402

sys.exit(main())
