"""``twistd scepproxyd``: command-line options and the service they make."""

import sys

from twisted.internet import reactor
from twisted.python import usage

from scepproxyd.config import ConfigError, load_settings
from scepproxyd.service import StartupError, make_service, prepare_state

DEFAULT_CONFIG = "/etc/scepproxyd/scepproxyd.ini"


class Options(usage.Options):
    synopsis = "[--config PATH]"
    longdesc = "Proxy SCEP between managed devices and certificate authorities."
    optParameters = [
        ["config", "c", DEFAULT_CONFIG, "Path to the INI configuration file."],
    ]

    def postOptions(self):
        try:
            self["settings"] = load_settings(self["config"])
        except ConfigError as e:
            raise usage.UsageError(str(e))


def makeService(config, reactor=reactor):
    """Prepare the state directory, then wire the daemon on ``reactor`` (tests pass a memory reactor).

    A L{StartupError} ends twistd with exit code 1 and one line on stderr,
    ``scepproxyd: <what to fix>``, instead of a traceback.
    """
    settings = config["settings"]
    try:
        prepare_state(settings)
    except StartupError as e:
        sys.exit("scepproxyd: %s" % (e,))
    return make_service(settings, reactor)
