"""The algorithms SCEP peers use, by the names the codec's API speaks.

Digests: SHA-1 and SHA-2 (SCEP clients still sign with SHA-1: micromdm
scepclient does). Content encryption: DES-CBC, DES-EDE3-CBC and AES-CBC, all
with PKCS#7 padding. Key transport: RSA PKCS#1 v1.5 and RSAES-OAEP.
"""

import os

from asn1crypto import algos, cms, core
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.asymmetric import padding as rsa_padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from scepproxyd.scep.codec.errors import MessageError

DIGESTS = {
    "sha1": hashes.SHA1,
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}

# name -> (asn1crypto algorithm name, key bytes)
CIPHERS = {
    "des": ("des", 8),
    "des3": ("tripledes_3key", 24),
    "aes128": ("aes128_cbc", 16),
    "aes192": ("aes192_cbc", 24),
    "aes256": ("aes256_cbc", 32),
}
_CIPHER_NAMES = {asn1_name: name for name, (asn1_name, _) in CIPHERS.items()}

KEY_TRANSPORTS = ("pkcs1v15", "oaep")


def digest_hash(name: str) -> hashes.HashAlgorithm:
    try:
        return DIGESTS[name]()
    except KeyError:
        raise MessageError("unsupported digest algorithm %r" % (name,)) from None


def digest(name: str, data: bytes) -> bytes:
    h = hashes.Hash(digest_hash(name))
    h.update(data)
    return h.finalize()


def _block_cipher(name: str, key: bytes, iv: bytes) -> Cipher:
    _, key_size = CIPHERS[name]
    if len(key) != key_size:
        raise MessageError("content key is %d bytes, %s needs %d" % (len(key), name, key_size))
    if name.startswith("aes"):
        block = algorithms.AES(key)
    else:
        # Single DES is 3DES with three equal keys.
        block = TripleDES(key * 3 if name == "des" else key)
    if len(iv) * 8 != block.block_size:
        raise MessageError("IV is %d bytes, %s needs %d" % (len(iv), name, block.block_size // 8))
    return Cipher(block, modes.CBC(iv))


def encrypt_content(name: str, plaintext: bytes) -> tuple[cms.EncryptionAlgorithm, bytes, bytes]:
    """Encrypt with a fresh key and IV: (algorithm identifier, ciphertext, key)."""
    asn1_name, key_size = CIPHERS[name]
    key = os.urandom(key_size)
    iv = os.urandom(16 if name.startswith("aes") else 8)
    padder = padding.PKCS7(len(iv) * 8).padder()
    padded = padder.update(plaintext) + padder.finalize()
    encryptor = _block_cipher(name, key, iv).encryptor()
    ciphertext = encryptor.update(padded) + encryptor.finalize()
    algorithm = cms.EncryptionAlgorithm({"algorithm": asn1_name, "parameters": cms.OctetString(iv)})
    return algorithm, ciphertext, key


def content_cipher_name(algorithm: cms.EncryptionAlgorithm) -> str:
    """Our name for a content-encryption algorithm identifier, or MessageError."""
    asn1_name = algorithm["algorithm"].native
    if asn1_name not in _CIPHER_NAMES:
        raise MessageError("unsupported content encryption %s" % (algorithm["algorithm"].dotted,))
    return _CIPHER_NAMES[asn1_name]


def decrypt_content(algorithm: cms.EncryptionAlgorithm, key: bytes, ciphertext: bytes) -> bytes:
    name = content_cipher_name(algorithm)
    parameters = algorithm["parameters"]
    if not isinstance(parameters, core.OctetString):
        raise MessageError("content encryption parameters are not an IV")
    iv = parameters.native
    decryptor = _block_cipher(name, key, iv).decryptor()
    if not ciphertext or len(ciphertext) % len(iv):
        raise MessageError("ciphertext is not a whole number of blocks")
    padded = decryptor.update(ciphertext) + decryptor.finalize()
    unpadder = padding.PKCS7(len(iv) * 8).unpadder()
    return unpadder.update(padded) + unpadder.finalize()


def _oaep(hash_name: str) -> rsa_padding.OAEP:
    algorithm = digest_hash(hash_name)
    return rsa_padding.OAEP(mgf=rsa_padding.MGF1(algorithm), algorithm=algorithm, label=None)


def key_transport_algorithm(key_transport: str) -> cms.KeyEncryptionAlgorithm:
    if key_transport == "pkcs1v15":
        return cms.KeyEncryptionAlgorithm({"algorithm": "rsaes_pkcs1v15", "parameters": core.Null()})
    if key_transport == "oaep":
        sha256 = algos.DigestAlgorithm({"algorithm": "sha256"})
        return cms.KeyEncryptionAlgorithm({
            "algorithm": "rsaes_oaep",
            "parameters": algos.RSAESOAEPParams({
                "hash_algorithm": sha256,
                "mask_gen_algorithm": {"algorithm": "mgf1", "parameters": sha256},
            }),
        })
    raise ValueError("key_transport must be one of %s" % (", ".join(KEY_TRANSPORTS),))


def key_transport_padding(key_transport: str) -> rsa_padding.AsymmetricPadding:
    return rsa_padding.PKCS1v15() if key_transport == "pkcs1v15" else _oaep("sha256")


def key_transport_padding_of(algorithm: cms.KeyEncryptionAlgorithm) -> rsa_padding.AsymmetricPadding:
    """The RSA padding a received KeyEncryptionAlgorithm names (OAEP: SHA-1 defaults allowed)."""
    name = algorithm["algorithm"].native
    if name == "rsaes_pkcs1v15":
        return rsa_padding.PKCS1v15()
    if name != "rsaes_oaep":
        raise MessageError("unsupported key transport %s" % (algorithm["algorithm"].dotted,))
    parameters = algorithm["parameters"]
    if not isinstance(parameters, algos.RSAESOAEPParams):
        parameters = algos.RSAESOAEPParams.load(parameters.dump()) if parameters.contents else algos.RSAESOAEPParams()
    hash_name = parameters["hash_algorithm"]["algorithm"].native
    mgf = parameters["mask_gen_algorithm"]
    if mgf["algorithm"].native != "mgf1" or mgf["parameters"]["algorithm"].native != hash_name:
        raise MessageError("OAEP with a mask generation other than MGF1 over the same hash")
    if parameters["p_source_algorithm"]["parameters"].native not in (b"", None):
        raise MessageError("OAEP with a label")
    return _oaep(hash_name)
