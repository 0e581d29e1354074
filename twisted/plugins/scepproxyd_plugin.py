from twisted.application.service import ServiceMaker

scepproxyd = ServiceMaker(
    "scepproxyd", "scepproxyd.tap", "SCEP proxy and certificate authority daemon", "scepproxyd"
)
