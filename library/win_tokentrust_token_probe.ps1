#!powershell

# Copyright: tokentrust contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

#AnsibleRequires -CSharpUtil Ansible.Basic

# read-only probe of the smart card side (no PIN, no desktop needed). Runs in --check too.
# What a WinRM session can see: the Smart Card service, the readers Windows enumerated (PnP), the cards in
# them with their ATR (WinSCard, system scope), and the minidrivers registered for card ATRs (Calais).
# It never opens the card with a PIN: over WinRM there is no desktop for the PIN dialog of the CSP/KSP.

$spec = @{
    options = @{}
    supports_check_mode = $true
}
$module = [Ansible.Basic.AnsibleModule]::Create($args, $spec)
$ErrorActionPreference = 'Stop'
$svc = Get-Service -Name SCardSvr -ErrorAction SilentlyContinue
$service = if ($svc) { @{ exists = $true; status = "$($svc.Status)"; start_type = "$($svc.StartType)" } }
           else { @{ exists = $false; status = $null; start_type = $null } }

# Certificate Propagation copies the key's certificates into the user's personal store at insertion (what
# "Tout enregistrer" of Classic Client Toolbox does by hand).
$cp = Get-Service -Name CertPropSvc -ErrorAction SilentlyContinue
$certprop = if ($cp) { @{ exists = $true; status = "$($cp.Status)"; start_type = "$($cp.StartType)" } }
            else { @{ exists = $false; status = $null; start_type = $null } }

# Group Policy "Turn on certificate propagation from smart card" (SmartCard.admx): 0 = propagation off.
$certpropPolicy = @{ enabled = $null }
$cpPol = [Microsoft.Win32.Registry]::LocalMachine.OpenSubKey('SOFTWARE\Policies\Microsoft\Windows\CertProp')
if ($cpPol) {
    $v = $cpPol.GetValue('CertPropEnabled')
    if ($null -ne $v) { $certpropPolicy.enabled = [int]$v }
    $cpPol.Close()
}

# Smart Card Device Enumeration Service: makes the device node of an inserted card (trigger-started).
$de = Get-Service -Name ScDeviceEnum -ErrorAction SilentlyContinue
$scdeviceenum = if ($de) { @{ exists = $true; status = "$($de.Status)"; start_type = "$($de.StartType)" } }
                else { @{ exists = $false; status = $null; start_type = $null } }

# An RDS session host redirects the key into the user's session: a WinRM session never sees it.
$ts = Get-CimInstance -Namespace 'root\cimv2\TerminalServices' -ClassName Win32_TerminalServiceSetting -ErrorAction SilentlyContinue
$rdsHost = [bool]($ts -and $ts.TerminalServerMode -eq 1)

$pnp = @(Get-PnpDevice -Class SmartCardReader -PresentOnly -ErrorAction SilentlyContinue |
    ForEach-Object { @{ name = [string]$_.FriendlyName; status = "$($_.Status)"; instance_id = [string]$_.InstanceId } })

Add-Type -TypeDefinition @'
using System;
using System.Runtime.InteropServices;
[StructLayout(LayoutKind.Sequential, CharSet = CharSet.Unicode)]
public struct TokentrustReaderState {
    public string Reader; public IntPtr UserData; public uint CurrentState; public uint EventState;
    public uint AtrLength; [MarshalAs(UnmanagedType.ByValArray, SizeConst = 36)] public byte[] Atr;
}
public static class TokentrustSCard {
    [DllImport("winscard.dll")] public static extern int SCardEstablishContext(uint scope, IntPtr r1, IntPtr r2, out IntPtr ctx);
    [DllImport("winscard.dll")] public static extern int SCardReleaseContext(IntPtr ctx);
    [DllImport("winscard.dll", CharSet = CharSet.Unicode)]
    public static extern int SCardListReaders(IntPtr ctx, string groups, char[] readers, ref uint len);
    [DllImport("winscard.dll", CharSet = CharSet.Unicode)]
    public static extern int SCardGetStatusChange(IntPtr ctx, uint timeout, [In, Out] TokentrustReaderState[] states, uint count);
}
'@

$scard = @{ context_error = $null; list_error = $null; readers = @() }
$ctx = [IntPtr]::Zero
$rc = [TokentrustSCard]::SCardEstablishContext(2, [IntPtr]::Zero, [IntPtr]::Zero, [ref]$ctx)   # SCARD_SCOPE_SYSTEM
if ($rc -ne 0) { $scard.context_error = ('0x{0:X8}' -f $rc) }
else {
    try {
        [uint32]$len = 0
        $rc = [TokentrustSCard]::SCardListReaders($ctx, $null, $null, [ref]$len)
        if ($rc -eq 0 -and $len -gt 0) {
            $buf = New-Object char[] $len
            $rc = [TokentrustSCard]::SCardListReaders($ctx, $null, $buf, [ref]$len)
        }
        if ($rc -ne 0) { $scard.list_error = ('0x{0:X8}' -f $rc) }
        else {
            $names = @([string]::new($buf).Split([char]0) | Where-Object { $_ })
            # a typed array, filled by assignment (a struct element changed in place would be a copy), so
            # that the [In, Out] marshalling writes the states back into it
            $states = [TokentrustReaderState[]]::new($names.Count)
            for ($i = 0; $i -lt $names.Count; $i++) {
                $s = New-Object TokentrustReaderState
                $s.Reader = $names[$i]; $s.CurrentState = 0; $s.Atr = New-Object byte[] 36
                $states[$i] = $s
            }
            if ($states.Length -gt 0) {
                $rc = [TokentrustSCard]::SCardGetStatusChange($ctx, 0, $states, [uint32]$states.Length)
                if ($rc -ne 0 -and $rc -ne 0x8010000A) { $scard.list_error = ('0x{0:X8}' -f $rc) }   # not SCARD_E_TIMEOUT
                $scard.readers = @(foreach ($s in $states) {
                    @{ name = [string]$s.Reader; event_state = [int64]$s.EventState
                       present = [bool]($s.EventState -band 0x20)                                       # SCARD_STATE_PRESENT
                       atr = (($s.Atr[0..([Math]::Max(0, [int]$s.AtrLength - 1))] | ForEach-Object { '{0:X2}' -f $_ }) -join '')
                       atr_length = [int]$s.AtrLength }
                })
            }
        }
    }
    finally { [void][TokentrustSCard]::SCardReleaseContext($ctx) }
}

# Minidrivers registered for card ATRs (HKLM\SOFTWARE\Microsoft\Cryptography\Calais\SmartCards, both views)
$cards = [System.Collections.Generic.List[object]]::new()
foreach ($view in 'Registry64', 'Registry32') {
    $base = [Microsoft.Win32.RegistryKey]::OpenBaseKey('LocalMachine', $view)
    $sc = $base.OpenSubKey('SOFTWARE\Microsoft\Cryptography\Calais\SmartCards')
    if ($sc) {
        foreach ($name in $sc.GetSubKeyNames()) {
            $k = $sc.OpenSubKey($name)
            $atr = $k.GetValue('ATR'); $mask = $k.GetValue('ATRMask')
            $cards.Add(@{ name = [string]$name; view = $(if ($view -eq 'Registry64') { 64 } else { 32 })
                atr = $(if ($atr) { ($atr | ForEach-Object { '{0:X2}' -f $_ }) -join '' } else { $null })
                atr_mask = $(if ($mask) { ($mask | ForEach-Object { '{0:X2}' -f $_ }) -join '' } else { $null })
                minidriver = $k.GetValue('80000001'); csp = $k.GetValue('Crypto Provider')
                ksp = $k.GetValue('Smart Card Key Storage Provider') })
            $k.Close()
        }
        $sc.Close()
    }
    $base.Close()
}

$module.Result.service = $service
$module.Result.certprop = $certprop
$module.Result.certprop_policy = $certpropPolicy
$module.Result.scdeviceenum = $scdeviceenum
$module.Result.rds_session_host = $rdsHost
$module.Result.pnp_readers = $pnp
$module.Result.scard = $scard
$module.Result.registered_cards = $cards
$module.Result.session = @{ interactive = [bool][Environment]::UserInteractive; id = [int](Get-Process -Id $PID).SessionId }
$module.ExitJson()
