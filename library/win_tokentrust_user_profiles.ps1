#!powershell

# Copyright: tokentrust contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

#AnsibleRequires -CSharpUtil Ansible.Basic

# list the user profiles (read-only). Runs in check mode too.
# A profile whose hive is not loaded is only usable when its NTUSER.DAT exists (stale ProfileList entries,
# FSLogix or User Profile Disk profiles on RDS keep it elsewhere); the Default profile is ProfileList's.

$spec = @{
    options = @{}
    supports_check_mode = $true
}
$module = [Ansible.Basic.AnsibleModule]::Create($args, $spec)
$ErrorActionPreference = 'Stop'
$list = 'HKLM:\SOFTWARE\Microsoft\Windows NT\CurrentVersion\ProfileList'
$loaded = @(Get-ChildItem -LiteralPath 'Registry::HKEY_USERS' | ForEach-Object { $_.PSChildName })
$me = [string][System.Security.Principal.WindowsIdentity]::GetCurrent().User.Value
$profiles = @(Get-ChildItem -LiteralPath $list | ForEach-Object {
    $image = $_.GetValue('ProfileImagePath')
    $path = if ($image) { [string][Environment]::ExpandEnvironmentVariables($image) } else { $null }
    [PSCustomObject]@{
        sid = [string]$_.PSChildName
        profile_path = $path
        loaded = $loaded -contains $_.PSChildName
        ntuser_exists = [bool]($path -and (Test-Path -LiteralPath "$path\NTUSER.DAT" -PathType Leaf))
    }
})
$defaultPath = [string][Environment]::ExpandEnvironmentVariables((Get-Item -LiteralPath $list).GetValue('Default'))
$default = @{ path = $defaultPath
              ntuser_exists = [bool]($defaultPath -and (Test-Path -LiteralPath "$defaultPath\NTUSER.DAT" -PathType Leaf)) }
$module.Result.profiles = $profiles
$module.Result.connection_sid = $me
$module.Result.default_profile = $default
$module.ExitJson()
