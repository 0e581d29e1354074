"""``twistd scepproxyd``: command-line options and the service they make."""

import sys

from twisted.python import usage

from scepproxyd.config import ConfigError, load_settings

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


def makeService(config, reactor=None):
    if reactor is None:
        from twisted.internet import reactor
    from scepproxyd.keys import KeyFileError
    from scepproxyd.service import StartupError, make_service, prepare_state
    from scepproxyd.store import StoreError
    from scepproxyd.daemon.tls import TLSConfigError

    settings = config["settings"]
    try:
        prepare_state(settings)
    except StartupError as e:
        sys.exit("scepproxyd: %s: %s" % (settings.config_path, e))
    except (OSError, StoreError, KeyFileError, TLSConfigError) as e:
        sys.exit("scepproxyd: cannot prepare state in %s: %s" % (settings.state_directory, e))
    return make_service(settings, reactor)
