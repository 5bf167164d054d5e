# -*- coding: utf-8 -*-
# Copyright: tokentrust contributors. GNU General Public License v3.0+
"""cffi declarations for the parts of NSPR / NSS / NSS-util / libssl3 that tokentrust uses (ABI mode).

ABI mode (``ffi.dlopen``) needs no compiler on the targets: only the shared libraries that every Firefox
and every NSS-based distribution ships. Struct layouts are declared only as far as we read them
(a prefix of the real struct is enough to read through a pointer; we never allocate these structs).
"""
from __future__ import annotations

import ctypes.util
import hashlib
import os
import sys
import traceback

from ansible.module_utils.tokentrust_facts import LINUX_INSTALL_DIRS, MACOS_APP

# The guard (as community.crypto guards cryptography): without cffi this package still imports, `ffi` says what to
# install when used, and the modules fail early with missing_required_lib and CFFI_IMPORT_ERROR's traceback.
try:
    from cffi import FFI
except ImportError:
    FFI = None
    CFFI_IMPORT_ERROR = traceback.format_exc()
else:
    CFFI_IMPORT_ERROR = None
HAS_CFFI = CFFI_IMPORT_ERROR is None

_CDEFS = []


def _cdef(text):
    """One block of declarations, kept in order; they are parsed once, at the end of this file, or not at all when
    the generated _ffi_abi.py was made from exactly these (see _make_ffi)."""
    _CDEFS.append(text)


# ---------------------------------------------------------------------------------------------- NSPR
_cdef(
    """
    typedef int PRInt32;
    typedef unsigned int PRUint32;
    typedef unsigned short PRUint16;
    typedef int PRIntn;
    typedef PRIntn PRBool;
    typedef PRInt32 PRErrorCode;
    typedef PRUint32 PRLanguageCode;
    typedef long long PRInt64;
    typedef PRInt64 PRTime;
    typedef PRUint32 PRIntervalTime;
    typedef enum { PR_FAILURE = -1, PR_SUCCESS = 0 } PRStatus;
    typedef struct PRFileDesc PRFileDesc;
    typedef struct PRCListStr PRCList;
    struct PRCListStr { PRCList *next; PRCList *prev; };

    PRErrorCode PR_GetError(void);
    void PR_SetError(PRErrorCode errorCode, PRInt32 oserr);
    const char *PR_ErrorToName(PRErrorCode code);
    const char *PR_ErrorToString(PRErrorCode code, PRLanguageCode language);
    PRTime PR_Now(void);
    PRIntervalTime PR_SecondsToInterval(PRUint32 seconds);
    PRIntervalTime PR_MillisecondsToInterval(PRUint32 milli);

    /* sockets (TLS test login) */
    typedef enum { PR_DESC_FILE = 1, PR_DESC_SOCKET_TCP = 2, PR_DESC_SOCKET_UDP = 3, PR_DESC_LAYERED = 4,
                   PR_DESC_PIPE = 5 } PRDescType;
    typedef struct PRAddrInfo PRAddrInfo;
    typedef union PRNetAddr { char raw[112]; } PRNetAddr;
    PRFileDesc *PR_OpenTCPSocket(PRIntn af);
    PRAddrInfo *PR_GetAddrInfoByName(const char *hostname, PRUint16 af, PRIntn flags);
    void *PR_EnumerateAddrInfo(void *enumPtr, const PRAddrInfo *addrInfo, PRUint16 port, PRNetAddr *result);
    void PR_FreeAddrInfo(PRAddrInfo *addrInfo);
    PRStatus PR_Connect(PRFileDesc *fd, const PRNetAddr *addr, PRIntervalTime timeout);
    PRStatus PR_Close(PRFileDesc *fd);
    PRInt32 PR_Send(PRFileDesc *fd, const void *buf, PRInt32 amount, PRIntn flags, PRIntervalTime timeout);
    PRInt32 PR_Recv(PRFileDesc *fd, void *buf, PRInt32 amount, PRIntn flags, PRIntervalTime timeout);
    PRUint16 PR_NetAddrFamily(const PRNetAddr *addr);
    """
)

# ---------------------------------------------------------------------------------------------- NSS util
_cdef(
    """
    typedef enum { SECWouldBlock = -2, SECFailure = -1, SECSuccess = 0 } SECStatus;
    typedef enum { siBuffer = 0 } SECItemType;
    typedef struct SECItemStr { SECItemType type; unsigned char *data; unsigned int len; } SECItem;
    typedef struct PLArenaPool PLArenaPool;
    typedef struct SECAlgorithmIDStr { SECItem algorithm; SECItem parameters; } SECAlgorithmID;

    void PORT_Free(void *ptr);
    char *PORT_Strdup(const char *s);
    void SECITEM_FreeItem(SECItem *zap, PRBool freeit);
    """
)

# ---------------------------------------------------------------------------------------------- NSS
_cdef(
    """
    typedef unsigned long CK_ULONG;
    typedef CK_ULONG CK_FLAGS;
    typedef CK_ULONG CK_OBJECT_HANDLE;
    typedef unsigned char CK_BYTE;
    typedef struct CK_VERSION { CK_BYTE major; CK_BYTE minor; } CK_VERSION;
    typedef struct CK_TOKEN_INFO {
        unsigned char label[32];
        unsigned char manufacturerID[32];
        unsigned char model[16];
        unsigned char serialNumber[16];
        CK_FLAGS flags;
        CK_ULONG ulMaxSessionCount;
        CK_ULONG ulSessionCount;
        CK_ULONG ulMaxRwSessionCount;
        CK_ULONG ulRwSessionCount;
        CK_ULONG ulMaxPinLen;
        CK_ULONG ulMinPinLen;
        CK_ULONG ulTotalPublicMemory;
        CK_ULONG ulFreePublicMemory;
        CK_ULONG ulTotalPrivateMemory;
        CK_ULONG ulFreePrivateMemory;
        CK_VERSION hardwareVersion;
        CK_VERSION firmwareVersion;
        unsigned char utcTime[16];
    } CK_TOKEN_INFO;

    typedef struct CERTCertDBHandle CERTCertDBHandle;
    typedef struct PK11SlotInfo PK11SlotInfo;
    typedef struct SECKEYPrivateKey SECKEYPrivateKey;
    /* struct CERTDistNamesStr (certt.h): the acceptable CA names of a CertificateRequest, DER names */
    typedef struct CERTDistNamesStr { PLArenaPool *arena; int nnames; SECItem *names; void *head; } CERTDistNames;
    typedef struct CERTSignedDataStr { SECItem data; SECAlgorithmID signatureAlgorithm; SECItem signature; }
        CERTSignedData;
    /* prefix of struct CERTCertificateStr (certt.h): we only read derCert */
    typedef struct CERTCertificateStr {
        PLArenaPool *arena;
        char *subjectName;
        char *issuerName;
        CERTSignedData signatureWrap;
        SECItem derCert;
        SECItem derIssuer;
        SECItem derSubject;
    } CERTCertificate;
    typedef struct CERTCertListNodeStr { PRCList links; CERTCertificate *cert; void *appData; } CERTCertListNode;
    typedef struct CERTCertListStr { PRCList list; PLArenaPool *arena; } CERTCertList;
    char *CERT_DerNameToAscii(SECItem *dername);
    typedef struct CERTCertTrustStr { unsigned int sslFlags; unsigned int emailFlags;
                                      unsigned int objectSigningFlags; } CERTCertTrust;

    typedef struct SECMODModuleStr SECMODModule;
    struct SECMODModuleStr {
        PLArenaPool *arena;
        PRBool internal;
        PRBool loaded;
        PRBool isFIPS;
        char *dllName;
        char *commonName;
        void *library;
        void *functionList;
        void *refLock;
        int refCount;
        PK11SlotInfo **slots;
        int slotCount;
        void *slotInfo;
        int slotInfoCount;
        unsigned long moduleID;
        PRBool isThreadSafe;
        unsigned long ssl[2];
        char *libraryParams;
    };
    typedef struct SECMODModuleListStr SECMODModuleList;
    struct SECMODModuleListStr { SECMODModuleList *next; SECMODModule *module; };
    typedef struct SECMODListLock SECMODListLock;

    typedef char *(*PK11PasswordFunc)(PK11SlotInfo *slot, PRBool retry, void *arg);

    SECStatus NSS_Initialize(const char *configdir, const char *certPrefix, const char *keyPrefix,
                             const char *secmodName, PRUint32 flags);
    SECStatus NSS_Shutdown(void);
    PRBool NSS_IsInitialized(void);
    const char *NSS_GetVersion(void);

    CERTCertDBHandle *CERT_GetDefaultCertDB(void);
    PK11SlotInfo *PK11_GetInternalKeySlot(void);
    PK11SlotInfo *PK11_ReferenceSlot(PK11SlotInfo *slot);
    void PK11_FreeSlot(PK11SlotInfo *slot);
    PRBool PK11_NeedUserInit(PK11SlotInfo *slot);
    PRBool PK11_NeedLogin(PK11SlotInfo *slot);
    PRBool PK11_IsLoggedIn(PK11SlotInfo *slot, void *wincx);
    PRBool PK11_IsPresent(PK11SlotInfo *slot);
    PRBool PK11_IsInternal(PK11SlotInfo *slot);
    PRBool PK11_IsHW(PK11SlotInfo *slot);
    PRBool PK11_IsReadOnly(PK11SlotInfo *slot);
    PRBool PK11_IsFriendly(PK11SlotInfo *slot);
    typedef struct PK11DefaultArrayEntryStr {
        const char *name;
        unsigned long flag;
        unsigned long mechanism;
    } PK11DefaultArrayEntry;
    SECStatus PK11_UpdateSlotAttribute(PK11SlotInfo *slot, const PK11DefaultArrayEntry *entry, PRBool add);
    char *PK11_GetTokenName(PK11SlotInfo *slot);
    char *PK11_GetSlotName(PK11SlotInfo *slot);
    SECStatus PK11_GetTokenInfo(PK11SlotInfo *slot, CK_TOKEN_INFO *info);
    SECStatus PK11_InitPin(PK11SlotInfo *slot, const char *ssopw, const char *pk11_userpwd);
    SECStatus PK11_ChangePW(PK11SlotInfo *slot, const char *oldpw, const char *newpw);
    SECStatus PK11_CheckUserPassword(PK11SlotInfo *slot, const char *pw);
    SECStatus PK11_Authenticate(PK11SlotInfo *slot, PRBool loadCerts, void *wincx);
    SECStatus PK11_Logout(PK11SlotInfo *slot);
    void PK11_SetPasswordFunc(PK11PasswordFunc func);
    PK11SlotInfo *PK11_FindSlotByName(const char *name);

    CERTCertList *PK11_ListCertsInSlot(PK11SlotInfo *slot);
    void CERT_DestroyCertList(CERTCertList *certs);
    void CERT_DestroyCertificate(CERTCertificate *cert);
    CERTCertificate *CERT_DupCertificate(CERTCertificate *c);
    CERTCertificate *CERT_DecodeCertFromPackage(char *certbuf, int certlen);
    CERTCertificate *CERT_FindCertByDERCert(CERTCertDBHandle *handle, SECItem *derCert);
    SECStatus CERT_GetCertTimes(const CERTCertificate *c, PRTime *notBefore, PRTime *notAfter);
    SECStatus CERT_GetCertTrust(const CERTCertificate *cert, CERTCertTrust *trust);
    char *CERT_EncodeTrustString(CERTCertTrust *trust);
    SECStatus CERT_DecodeTrustString(CERTCertTrust *trust, const char *trusts);
    SECStatus CERT_ChangeCertTrust(CERTCertDBHandle *handle, CERTCertificate *cert, CERTCertTrust *trust);
    SECStatus PK11_ImportCert(PK11SlotInfo *slot, CERTCertificate *cert, CK_OBJECT_HANDLE key,
                              const char *nickname, PRBool includeTrust);
    SECStatus SEC_DeletePermCertificate(CERTCertificate *cert);
    SECKEYPrivateKey *PK11_FindKeyByAnyCert(CERTCertificate *cert, void *wincx);
    SECKEYPrivateKey *PK11_FindPrivateKeyFromCert(PK11SlotInfo *slot, CERTCertificate *cert, void *wincx);
    void SECKEY_DestroyPrivateKey(SECKEYPrivateKey *key);

    SECMODModuleList *SECMOD_GetDefaultModuleList(void);
    SECMODListLock *SECMOD_GetDefaultModuleListLock(void);
    void SECMOD_GetReadLock(SECMODListLock *lock);
    void SECMOD_ReleaseReadLock(SECMODListLock *lock);
    SECStatus SECMOD_AddNewModule(const char *moduleName, const char *dllPath,
                                  unsigned long defaultMechanismFlags, unsigned long cipherEnableFlags);
    SECStatus SECMOD_DeleteModule(const char *moduleName, int *type);
    SECMODModule *SECMOD_FindModule(const char *name);
    void SECMOD_DestroyModule(SECMODModule *module);
    SECMODModule *SECMOD_LoadUserModule(char *moduleSpec, SECMODModule *parent, PRBool recurse);
    SECStatus SECMOD_UnloadUserModule(SECMODModule *mod);
    """
)

# ---------------------------------------------------------------------------------------------- libssl3
_cdef(
    """
    typedef SECStatus (*SSLGetClientAuthData)(void *arg, PRFileDesc *fd, CERTDistNames *caNames,
                                              CERTCertificate **pRetCert, SECKEYPrivateKey **pRetKey);
    typedef SECStatus (*SSLAuthCertificate)(void *arg, PRFileDesc *fd, PRBool checkSig, PRBool isServer);
    typedef SECStatus (*SSLBadCertHandler)(void *arg, PRFileDesc *fd);
    typedef void (*SSLHandshakeCallback)(PRFileDesc *fd, void *client_data);

    PRFileDesc *SSL_ImportFD(PRFileDesc *model, PRFileDesc *fd);
    SECStatus SSL_OptionSet(PRFileDesc *fd, PRInt32 option, PRIntn val);
    SECStatus SSL_OptionSetDefault(PRInt32 option, PRIntn val);
    SECStatus SSL_SetURL(PRFileDesc *fd, const char *url);
    SECStatus SSL_SetPKCS11PinArg(PRFileDesc *fd, void *a);
    SECStatus SSL_GetClientAuthDataHook(PRFileDesc *fd, SSLGetClientAuthData f, void *a);
    SECStatus NSS_GetClientAuthData(void *arg, PRFileDesc *socket, CERTDistNames *caNames,
                                    CERTCertificate **pRetCert, SECKEYPrivateKey **pRetKey);
    SECStatus SSL_AuthCertificateHook(PRFileDesc *fd, SSLAuthCertificate f, void *arg);
    SECStatus SSL_AuthCertificate(void *arg, PRFileDesc *fd, PRBool checkSig, PRBool isServer);
    SECStatus SSL_BadCertHook(PRFileDesc *fd, SSLBadCertHandler f, void *arg);
    SECStatus SSL_HandshakeCallback(PRFileDesc *fd, SSLHandshakeCallback cb, void *client_data);
    SECStatus SSL_ResetHandshake(PRFileDesc *fd, PRBool asServer);
    SECStatus SSL_ForceHandshake(PRFileDesc *fd);
    SECStatus SSL_ForceHandshakeWithTimeout(PRFileDesc *fd, PRIntervalTime timeout);
    CERTCertificate *SSL_PeerCertificate(PRFileDesc *fd);
    CERTCertificate *SSL_LocalCertificate(PRFileDesc *fd);
    SECStatus NSS_SetDomesticPolicy(void);
    SECStatus SSL_ClearSessionCache(void);
    """
)

_LIBS = {
    "nspr4": ("libnspr4.so",),
    "nssutil3": ("libnssutil3.so",),
    "nss3": ("libnss3.so",),
    "smime3": ("libsmime3.so",),
    "ssl3": ("libssl3.so",),
}
# Firefox builds that ship their own NSS: a profile must be written by the NSS of the Firefox that uses it (NSS
# 3.115+ stores trust as PKCS#11 3.2 CKO_TRUST objects, which older NSS reads as "no trust"), so these come first.
# Where Firefox is installed is a fact of module_utils/tokentrust_facts.py (its policies.json lookup uses it too).
FIREFOX_NSS_DIRS = tuple(LINUX_INSTALL_DIRS) + (MACOS_APP + "/Contents/MacOS",)
SYSTEM_NSS_DIRS = (
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/lib/x86_64-linux-gnu/nss",
    "/opt/homebrew/lib",
    "/usr/local/lib",
)


def nss_dirs():
    """Where libnss3 is looked for, in order. TOKENTRUST_NSS_LIBDIR: a directory, or 'system' to skip Firefox's."""
    env = os.environ.get("TOKENTRUST_NSS_LIBDIR", "")
    if env == "system":
        return SYSTEM_NSS_DIRS
    return ((env,) if env else ()) + FIREFOX_NSS_DIRS + SYSTEM_NSS_DIRS


def nss_libdir():
    """The directory libnss3 is (or will be) loaded from."""
    return os.path.dirname(_find("nss3", _LIBS["nss3"])) or None


def _find(short: str, names) -> str:
    for d in nss_dirs():
        if not d:
            continue
        for n in names:
            for cand in (n, n.replace(".so", ".dylib")):
                p = os.path.join(d, cand)
                if os.path.exists(p):
                    return p
    found = ctypes.util.find_library(short)
    if found:
        return found
    return names[0]


# Libraries that an NSS build may ship beside libnss3 and that must come from the same build (a Firefox install
# ships its own libnssutil3 and libmozsqlite3; loading the system ones instead fails on symbol versions).
_SIBLINGS = ("libnspr4.so", "libplc4.so", "libplds4.so", "libnssutil3.so", "libmozsqlite3.so")


class _Libs:
    """Lazily dlopen'ed libraries: importing this module never fails for lack of NSS; using it does."""

    def __init__(self):
        self._loaded = {}
        self._preloaded = set()

    def _preload_siblings(self, path):
        d = os.path.dirname(path)
        if d in self._preloaded:
            return
        self._preloaded.add(d)
        for name in _SIBLINGS:
            p = os.path.join(d, name)
            if os.path.exists(p):
                ctypes.CDLL(p, mode=ctypes.RTLD_GLOBAL)

    def __getattr__(self, short):
        if short.startswith("_"):
            raise AttributeError(short)
        if short not in self._loaded:
            names = _LIBS[short]
            path = _find(short, names)
            try:
                if os.path.isabs(path):
                    self._preload_siblings(path)
                self._loaded[short] = ffi.dlopen(path)
            except OSError as exc:
                # the package's own error type (an NSSError), so every module's NSS error handling applies and the
                # user reads this message, not a traceback
                from ansible.module_utils.tokentrust_nss.errors import NSSMissingError

                raise NSSMissingError(
                    "load NSS", None, None, "NSS_NOT_FOUND",
                    "cannot load %s (%s): install NSS (Debian/Ubuntu: apt-get install libnss3; "
                    "RHEL: dnf install nss; macOS: brew install nss) or set TOKENTRUST_NSS_LIBDIR" % (path, exc)
                ) from None
        return self._loaded[short]

    def paths(self):
        """Where each loaded library came from (for reports and error messages)."""
        return {k: getattr(v, "_name", None) for k, v in self._loaded.items()}


lib = _Libs()

# ---------------------------------------------------------------------------------------------- token + TLS login
# (appended for token.py / tls.py; layouts from sslt.h, NSS 3.87)
_cdef(
    """
    /* prefix of SSLChannelInfo (sslt.h): SSL_GetChannelInfo copies min(len, its size) */
    typedef struct SSLChannelInfoStr {
        PRUint32 length;
        PRUint16 protocolVersion;
        PRUint16 cipherSuite;
        PRUint32 authKeyBits;
        PRUint32 keaKeyBits;
    } SSLChannelInfo;
    SECStatus SSL_GetChannelInfo(PRFileDesc *fd, SSLChannelInfo *info, unsigned int len);
    typedef struct SSLVersionRangeStr { PRUint16 min; PRUint16 max; } SSLVersionRange;
    SECStatus SSL_VersionRangeSet(PRFileDesc *fd, const SSLVersionRange *vrange);
    """
)

# ---------------------------------------------------------------------------------------------- raw PKCS#11
# (appended for token.py: PIN change and PUK unblock talk to the module directly, without NSS, because NSS keeps a
# read-only session open on every token and PKCS#11 refuses an SO login while one exists:
# CKR_SESSION_READ_ONLY_EXISTS). A prefix of CK_FUNCTION_LIST (pkcs11f.h order, version 2.x) up to C_Logout.
_cdef(
    """
    typedef CK_ULONG CK_RV;
    typedef struct CK_FUNCTION_LIST {
        CK_VERSION version;
        CK_RV (*C_Initialize)(void *pInitArgs);
        CK_RV (*C_Finalize)(void *pReserved);
        void *C_GetInfo;
        void *C_GetFunctionList;
        CK_RV (*C_GetSlotList)(unsigned char tokenPresent, CK_ULONG *pSlotList, CK_ULONG *pulCount);
        void *C_GetSlotInfo;
        CK_RV (*C_GetTokenInfo)(CK_ULONG slotID, CK_TOKEN_INFO *pInfo);
        void *C_GetMechanismList;
        void *C_GetMechanismInfo;
        void *C_InitToken;
        CK_RV (*C_InitPIN)(CK_ULONG hSession, unsigned char *pPin, CK_ULONG ulPinLen);
        CK_RV (*C_SetPIN)(CK_ULONG hSession, unsigned char *pOldPin, CK_ULONG ulOldLen, unsigned char *pNewPin,
                          CK_ULONG ulNewLen);
        CK_RV (*C_OpenSession)(CK_ULONG slotID, CK_FLAGS flags, void *pApplication, void *Notify,
                               CK_ULONG *phSession);
        CK_RV (*C_CloseSession)(CK_ULONG hSession);
        void *C_CloseAllSessions;
        void *C_GetSessionInfo;
        void *C_GetOperationState;
        void *C_SetOperationState;
        CK_RV (*C_Login)(CK_ULONG hSession, CK_ULONG userType, unsigned char *pPin, CK_ULONG ulPinLen);
        CK_RV (*C_Logout)(CK_ULONG hSession);
    } CK_FUNCTION_LIST;
    CK_RV C_GetFunctionList(CK_FUNCTION_LIST **ppFunctionList);
    """
)


# ---------------------------------------------------------------------------------------------- the ffi object
def cdef_source():
    """Every declaration above, as one text (what cffi parses, and what _ffi_abi.py was generated from)."""
    return "\n".join(_CDEFS)


def cdef_digest():
    return hashlib.sha256(cdef_source().encode("utf-8")).hexdigest()


def _make_ffi():
    """The out-of-line ABI module that scripts/gen_nss_ffi.py generates from these declarations (`make ffi`): it
    holds them pre-parsed, so a module call does not import pycparser and parse them again (about 50 to 90 ms less
    per call on a Debian 12 workstation, measured). The declarations are parsed here instead when that file is
    missing, was made from other declarations (its digest differs), or this cffi refuses it."""
    try:
        from ansible.module_utils.tokentrust_nss import _ffi_abi

        if _ffi_abi.CDEF_SHA256 == cdef_digest():
            return _ffi_abi.ffi
    except Exception:  # noqa: BLE001 - any reason to not use it means: parse
        pass
    parsed = FFI()
    parsed.cdef(cdef_source())
    return parsed


class _MissingCffi:
    """`ffi` when cffi cannot be imported: any use raises NSSMissingError (an NSSError) saying what to install."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        from ansible.module_utils.tokentrust_nss.errors import NSSMissingError

        raise NSSMissingError(
            "load cffi", None, None, "CFFI_NOT_FOUND",
            "the Python cffi package is not installed for %s: install it (Debian/Ubuntu: apt-get install python3-cffi; "
            "RHEL: dnf install python3-cffi; or pip install cffi)" % sys.executable)


ffi = _make_ffi() if HAS_CFFI else _MissingCffi()
