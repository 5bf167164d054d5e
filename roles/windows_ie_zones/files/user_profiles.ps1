# tokentrust: list the user profiles (read-only). Runs in check mode too.
[CmdletBinding(SupportsShouldProcess)]
param ()
$Ansible.Changed = $false
$loaded = @(Get-ChildItem -LiteralPath 'Registry::HKEY_USERS' | ForEach-Object { $_.PSChildName })
$me = [System.Security.Principal.WindowsIdentity]::GetCurrent().User.Value
$profiles = @(Get-ChildItem -LiteralPath 'HKLM:\SOFTWARE\Microsoft\Windows NT\CurrentVersion\ProfileList' | ForEach-Object {
    $image = $_.GetValue('ProfileImagePath')
    [PSCustomObject]@{
        sid = $_.PSChildName
        profile_path = if ($image) { [Environment]::ExpandEnvironmentVariables($image) } else { $null }
        loaded = $loaded -contains $_.PSChildName
    }
})
$Ansible.Result = @{ profiles = $profiles; connection_sid = $me }
