/*
 * pkcs11_min.h - the few PKCS#11 (v2.40) declarations pin_guard needs, written for tokentrust.
 *
 * Only what pin_guard touches is typed; the function list keeps the exact layout of the
 * standard CK_FUNCTION_LIST (a version, then 68 function pointers in the order of the
 * specification) so that a copy of a real module's list can be made with memcpy.
 * Linux/macOS ABI: no structure packing, CK_ULONG is unsigned long.
 */
#ifndef PIN_GUARD_PKCS11_MIN_H
#define PIN_GUARD_PKCS11_MIN_H

typedef unsigned long CK_ULONG;
typedef unsigned long CK_RV;
typedef unsigned long CK_FLAGS;
typedef unsigned long CK_SLOT_ID;
typedef unsigned long CK_SESSION_HANDLE;
typedef unsigned long CK_USER_TYPE;
typedef unsigned long CK_STATE;
typedef unsigned char CK_UTF8CHAR;
typedef unsigned char CK_BBOOL;

typedef struct CK_VERSION {
    unsigned char major;
    unsigned char minor;
} CK_VERSION;

typedef struct CK_TOKEN_INFO {
    CK_UTF8CHAR label[32];
    CK_UTF8CHAR manufacturerID[32];
    CK_UTF8CHAR model[16];
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

typedef struct CK_SESSION_INFO {
    CK_SLOT_ID slotID;
    CK_STATE state;
    CK_FLAGS flags;
    CK_ULONG ulDeviceError;
} CK_SESSION_INFO;

struct CK_FUNCTION_LIST;
typedef struct CK_FUNCTION_LIST CK_FUNCTION_LIST;

typedef CK_RV (*CK_C_GetFunctionList)(CK_FUNCTION_LIST **);
typedef CK_RV (*CK_C_GetSlotList)(CK_BBOOL, CK_SLOT_ID *, CK_ULONG *);
typedef CK_RV (*CK_C_GetTokenInfo)(CK_SLOT_ID, CK_TOKEN_INFO *);
typedef CK_RV (*CK_C_InitToken)(CK_SLOT_ID, CK_UTF8CHAR *, CK_ULONG, CK_UTF8CHAR *);
typedef CK_RV (*CK_C_InitPIN)(CK_SESSION_HANDLE, CK_UTF8CHAR *, CK_ULONG);
typedef CK_RV (*CK_C_SetPIN)(CK_SESSION_HANDLE, CK_UTF8CHAR *, CK_ULONG, CK_UTF8CHAR *, CK_ULONG);
typedef CK_RV (*CK_C_GetSessionInfo)(CK_SESSION_HANDLE, CK_SESSION_INFO *);
typedef CK_RV (*CK_C_Login)(CK_SESSION_HANDLE, CK_USER_TYPE, CK_UTF8CHAR *, CK_ULONG);

typedef void *CK_ANY_FN; /* a function pin_guard forwards untouched */

struct CK_FUNCTION_LIST {
    CK_VERSION version;
    CK_ANY_FN C_Initialize;
    CK_ANY_FN C_Finalize;
    CK_ANY_FN C_GetInfo;
    CK_C_GetFunctionList C_GetFunctionList;
    CK_C_GetSlotList C_GetSlotList;
    CK_ANY_FN C_GetSlotInfo;
    CK_C_GetTokenInfo C_GetTokenInfo;
    CK_ANY_FN C_GetMechanismList;
    CK_ANY_FN C_GetMechanismInfo;
    CK_C_InitToken C_InitToken;
    CK_C_InitPIN C_InitPIN;
    CK_C_SetPIN C_SetPIN;
    CK_ANY_FN C_OpenSession;
    CK_ANY_FN C_CloseSession;
    CK_ANY_FN C_CloseAllSessions;
    CK_C_GetSessionInfo C_GetSessionInfo;
    CK_ANY_FN C_GetOperationState;
    CK_ANY_FN C_SetOperationState;
    CK_C_Login C_Login;
    CK_ANY_FN C_Logout;
    CK_ANY_FN C_CreateObject;
    CK_ANY_FN C_CopyObject;
    CK_ANY_FN C_DestroyObject;
    CK_ANY_FN C_GetObjectSize;
    CK_ANY_FN C_GetAttributeValue;
    CK_ANY_FN C_SetAttributeValue;
    CK_ANY_FN C_FindObjectsInit;
    CK_ANY_FN C_FindObjects;
    CK_ANY_FN C_FindObjectsFinal;
    CK_ANY_FN C_EncryptInit;
    CK_ANY_FN C_Encrypt;
    CK_ANY_FN C_EncryptUpdate;
    CK_ANY_FN C_EncryptFinal;
    CK_ANY_FN C_DecryptInit;
    CK_ANY_FN C_Decrypt;
    CK_ANY_FN C_DecryptUpdate;
    CK_ANY_FN C_DecryptFinal;
    CK_ANY_FN C_DigestInit;
    CK_ANY_FN C_Digest;
    CK_ANY_FN C_DigestUpdate;
    CK_ANY_FN C_DigestKey;
    CK_ANY_FN C_DigestFinal;
    CK_ANY_FN C_SignInit;
    CK_ANY_FN C_Sign;
    CK_ANY_FN C_SignUpdate;
    CK_ANY_FN C_SignFinal;
    CK_ANY_FN C_SignRecoverInit;
    CK_ANY_FN C_SignRecover;
    CK_ANY_FN C_VerifyInit;
    CK_ANY_FN C_Verify;
    CK_ANY_FN C_VerifyUpdate;
    CK_ANY_FN C_VerifyFinal;
    CK_ANY_FN C_VerifyRecoverInit;
    CK_ANY_FN C_VerifyRecover;
    CK_ANY_FN C_DigestEncryptUpdate;
    CK_ANY_FN C_DecryptDigestUpdate;
    CK_ANY_FN C_SignEncryptUpdate;
    CK_ANY_FN C_DecryptVerifyUpdate;
    CK_ANY_FN C_GenerateKey;
    CK_ANY_FN C_GenerateKeyPair;
    CK_ANY_FN C_WrapKey;
    CK_ANY_FN C_UnwrapKey;
    CK_ANY_FN C_DeriveKey;
    CK_ANY_FN C_SeedRandom;
    CK_ANY_FN C_GenerateRandom;
    CK_ANY_FN C_GetFunctionStatus;
    CK_ANY_FN C_CancelFunction;
    CK_ANY_FN C_WaitForSlotEvent;
};

#define CKR_OK                        0x000UL
#define CKR_GENERAL_ERROR             0x005UL
#define CKR_HOST_MEMORY               0x002UL
#define CKR_ARGUMENTS_BAD             0x007UL
#define CKR_DEVICE_ERROR              0x030UL
#define CKR_PIN_INCORRECT             0x0A0UL
#define CKR_PIN_LOCKED                0x0A4UL
#define CKR_BUFFER_TOO_SMALL          0x150UL

#define CKU_SO                        0UL
#define CKU_USER                      1UL
#define CKU_CONTEXT_SPECIFIC          2UL

#define CKS_RW_SO_FUNCTIONS           4UL

#define CKF_TOKEN_INITIALIZED         0x00000400UL
#define CKF_USER_PIN_COUNT_LOW        0x00010000UL
#define CKF_USER_PIN_FINAL_TRY        0x00020000UL
#define CKF_USER_PIN_LOCKED           0x00040000UL
#define CKF_USER_PIN_TO_BE_CHANGED    0x00080000UL
#define CKF_SO_PIN_COUNT_LOW          0x00100000UL
#define CKF_SO_PIN_FINAL_TRY          0x00200000UL
#define CKF_SO_PIN_LOCKED             0x00400000UL

#endif
