"""scepproxyd: a Twisted daemon that proxies SCEP between devices and certificate authorities."""

__version__ = "0.1.0"
