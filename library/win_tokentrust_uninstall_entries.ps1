#!powershell

# Copyright: tokentrust contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

#AnsibleRequires -CSharpUtil Ansible.Basic

# list the machine-wide Uninstall entries of both registry views (read-only).

$spec = @{
    options = @{}
    supports_check_mode = $true
}
$module = [Ansible.Basic.AnsibleModule]::Create($args, $spec)
$ErrorActionPreference = 'Stop'
$entries = [System.Collections.Generic.List[object]]::new()
foreach ($view in @(@{ name = 'Registry64'; bits = 64 }, @{ name = 'Registry32'; bits = 32 })) {
    $base = [Microsoft.Win32.RegistryKey]::OpenBaseKey('LocalMachine', $view.name)
    $un = $base.OpenSubKey('SOFTWARE\Microsoft\Windows\CurrentVersion\Uninstall')
    if ($un) {
        foreach ($k in $un.GetSubKeyNames()) {
            $key = $un.OpenSubKey($k)
            if (-not $key) { continue }
            $name = $key.GetValue('DisplayName')
            if ($name) {
                $entries.Add(@{
                    key = [string]$k
                    display_name = $name
                    display_version = $key.GetValue('DisplayVersion')
                    publisher = $key.GetValue('Publisher')
                    windows_installer = [int]($key.GetValue('WindowsInstaller', 0))
                    uninstall_string = $key.GetValue('UninstallString')
                    quiet_uninstall_string = $key.GetValue('QuietUninstallString')
                    view = $view.bits
                })
            }
            $key.Close()
        }
        $un.Close()
    }
    $base.Close()
}
$module.Result.entries = $entries
$module.ExitJson()
