/*
 * A stand-in for Windows' bcryptprimitives.dll, for running ferromq's Windows build under
 * Wine 8 (Debian 12), which lacks that DLL. Rust's standard library takes its random numbers
 * from ProcessPrng (Windows 10 and later have it); this one asks RtlGenRandom (advapi32's
 * SystemFunction036) instead. Tests only: never shipped with ferromq.
 */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length)
{
    while (length > 0) {
        ULONG n = length > 0x10000000 ? 0x10000000 : (ULONG)length;
        if (!SystemFunction036(data, n))
            return FALSE;
        data += n;
        length -= n;
    }
    return TRUE;
}
