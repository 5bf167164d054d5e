#!powershell

# Copyright: tokentrust contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

#AnsibleRequires -CSharpUtil Ansible.Basic

# read-only probe of Firefox installs, gclib.dll candidates, Firefox GPO registry and
# policies.json files. Architectures come from the PE header (IMAGE_FILE_HEADER.Machine).

$spec = @{
    options = @{
        firefox_dirs = @{ type = 'list'; elements = 'str'; default = @() }
        gclib_paths  = @{ type = 'list'; elements = 'str'; default = @() }
    }
    supports_check_mode = $true
}
$module = [Ansible.Basic.AnsibleModule]::Create($args, $spec)
$FirefoxDirs = $module.Params.firefox_dirs
$GclibPaths = $module.Params.gclib_paths
$ErrorActionPreference = 'Stop'

function Get-PEMachine([string]$Path) {
    $fs = [System.IO.File]::Open($Path, 'Open', 'Read', 'ReadWrite')
    try {
        $br = New-Object System.IO.BinaryReader($fs)
        if ($fs.Length -lt 64 -or $br.ReadUInt16() -ne 0x5A4D) { return $null }   # 'MZ'
        $fs.Position = 0x3C
        $peOffset = $br.ReadInt32()
        if ($peOffset -lt 0 -or $peOffset + 6 -gt $fs.Length) { return $null }
        $fs.Position = $peOffset
        if ($br.ReadUInt32() -ne 0x00004550) { return $null }                     # 'PE\0\0'
        return [int]$br.ReadUInt16()
    }
    finally { $fs.Dispose() }
}

# The given paths name their folders with environment variables (%ProgramFiles%\Mozilla Firefox): they are
# expanded here, on the host. %ProgramFiles% is the 64-bit folder: a 32-bit PowerShell sees ProgramFiles as the
# 32-bit one, ProgramW6432 is the 64-bit one in both (64-bit Windows).
$ProgramFiles64 = if ($env:ProgramW6432) { $env:ProgramW6432 } else { $env:ProgramFiles }
function Expand-HostPath([string]$Given) {
    $p = $Given
    if ($ProgramFiles64) { $p = $p -ireplace '%ProgramFiles%', $ProgramFiles64.Replace('$', '$$') }
    return [Environment]::ExpandEnvironmentVariables($p)
}

function Get-FileInfo([string]$Path, $Given) {
    # path: as looked at (expanded); given: as the task gave it (null for a folder the host registers)
    $info = @{ path = $Path; given = $(if ($null -ne $Given) { [string]$Given } else { $null })
               exists = $false; machine = $null; version = $null; reason = $null }
    if ($Path -match '%[^%\\]+%') {
        # a variable this host does not define (%ProgramFiles(x86)% on 32-bit Windows): not a path to look at
        $info.reason = "environment variable $($Matches[0]) is not defined on this host"
    }
    elseif (Test-Path -LiteralPath $Path -PathType Leaf) {
        $version = (Get-Item -LiteralPath $Path).VersionInfo.ProductVersion
        $info.exists = $true
        $info.machine = Get-PEMachine $Path
        $info.version = $(if ($version) { [string]$version } else { $null })
    }
    return $info
}

# Firefox: the given folders, the install folders Mozilla's installer registers (machine: both views; per
# user: each loaded user hive), each profile's %LOCALAPPDATA%\Mozilla Firefox, and the Microsoft Store build.
$dirs = [System.Collections.Generic.List[string]]::new()
$kinds = @{}
$givens = @{}
function Add-Dir([string]$Dir, [string]$Kind, $Given = $null) {
    $d = $Dir.TrimEnd('\')
    if ($d -and -not $dirs.Contains($d)) { $dirs.Add($d); $kinds[$d] = $Kind; $givens[$d] = $Given }
}
foreach ($d in $FirefoxDirs) { Add-Dir (Expand-HostPath $d) 'machine' $d }
function Read-Installs($Root, [string]$Kind) {
    $moz = $Root.OpenSubKey('SOFTWARE\Mozilla\Mozilla Firefox')
    if ($moz) {
        foreach ($ver in $moz.GetSubKeyNames()) {
            $main = $moz.OpenSubKey("$ver\Main")
            if ($main) {
                $dir = $main.GetValue('Install Directory')
                if ($dir) { Add-Dir $dir $Kind }
                $main.Close()
            }
        }
        $moz.Close()
    }
}
foreach ($view in 'Registry64', 'Registry32') {
    $base = [Microsoft.Win32.RegistryKey]::OpenBaseKey('LocalMachine', $view)
    Read-Installs $base 'machine'
    $base.Close()
}
foreach ($sid in [Microsoft.Win32.Registry]::Users.GetSubKeyNames()) {
    if ($sid -notmatch '^S-1-(5-21|12-1)-[\d-]+$') { continue }
    $hive = [Microsoft.Win32.Registry]::Users.OpenSubKey($sid)
    if ($hive) { Read-Installs $hive 'user'; $hive.Close() }
}
$list = [Microsoft.Win32.Registry]::LocalMachine.OpenSubKey('SOFTWARE\Microsoft\Windows NT\CurrentVersion\ProfileList')
foreach ($sid in $list.GetSubKeyNames()) {
    if ($sid -notmatch '^S-1-(5-21|12-1)-[\d-]+$') { continue }
    $image = $list.OpenSubKey($sid).GetValue('ProfileImagePath')
    if ($image) {
        $local = [Environment]::ExpandEnvironmentVariables($image) + '\AppData\Local\Mozilla Firefox'
        if (Test-Path -LiteralPath "$local\firefox.exe" -PathType Leaf) { Add-Dir $local 'user' }
    }
}
$list.Close()
foreach ($pkg in @(Get-AppxPackage -AllUsers -Name 'Mozilla.Firefox*' -ErrorAction SilentlyContinue)) {
    Add-Dir "$($pkg.InstallLocation)\VFS\ProgramFiles\Firefox Package Root" 'store'
}
$installs = @(foreach ($d in $dirs) {
    $i = Get-FileInfo "$d\firefox.exe" $givens[$d]; $i.dir = [string]$d; $i.kind = "$($kinds[$d])"; $i
})
$gclib = @(foreach ($p in $GclibPaths) { Get-FileInfo (Expand-HostPath $p) $p })

# GPO registry: {relative key: {value name: data}}, machine (HKLM) and per loaded user hive (HKU\<SID>:
# Firefox also reads user Group Policy from HKCU).
function Read-Key($Key, [string]$Rel) {
    $dump = @{}
    $values = @{}
    foreach ($n in $Key.GetValueNames()) {
        if ($n) { $values[$n] = $Key.GetValue($n, $null, 'DoNotExpandEnvironmentNames') }
    }
    $dump[$Rel] = $values
    foreach ($s in $Key.GetSubKeyNames()) {
        $sub = $Key.OpenSubKey($s)
        $below = Read-Key $sub $(if ($Rel) { "$Rel\$s" } else { $s })
        foreach ($e in $below.GetEnumerator()) { $dump[$e.Key] = $e.Value }
        $sub.Close()
    }
    return $dump
}
$gpo = @{}
$root = [Microsoft.Win32.Registry]::LocalMachine.OpenSubKey('SOFTWARE\Policies\Mozilla\Firefox')
if ($root) { $gpo = Read-Key $root ''; $root.Close() }
$gpoUsers = @{}
foreach ($sid in [Microsoft.Win32.Registry]::Users.GetSubKeyNames()) {
    if ($sid -notmatch '^S-1-(5-21|12-1)-[\d-]+$') { continue }   # user hives, not *_Classes or well-known SIDs
    $userRoot = [Microsoft.Win32.Registry]::Users.OpenSubKey("$sid\Software\Policies\Mozilla\Firefox")
    if ($userRoot) {
        $gpoUsers[$sid] = Read-Key $userRoot ''
        $userRoot.Close()
    }
}

$policies = @{}
foreach ($i in $installs) {
    if (-not $i.exists) { continue }   # no Firefox there (or a folder whose variable is undefined)
    $p = "$($i.dir)\distribution\policies.json"
    $policies[$p] = if (Test-Path -LiteralPath $p -PathType Leaf) {
        [string][System.IO.File]::ReadAllText($p, [System.Text.UTF8Encoding]::new($false))
    } else { $null }
}

$module.Result.installs = $installs
$module.Result.gclib = $gclib
$module.Result.gpo = $gpo
$module.Result.gpo_users = $gpoUsers
$module.Result.policies_json = $policies
$module.Result.program_files = @{
    x64 = $(if ($env:ProgramW6432) { [string]$env:ProgramW6432 } else { $null })
    x86 = $(if (${env:ProgramFiles(x86)}) { [string]${env:ProgramFiles(x86)} } else { $null })
}
$module.ExitJson()
