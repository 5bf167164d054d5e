#!powershell

# Copyright: tokentrust contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

#AnsibleRequires -CSharpUtil Ansible.Basic

# read-only list of the users logged on at this PC (console or RDP): owners of explorer.exe, one
# per interactive session. Runs in check mode too. The WinRM session itself has no explorer.exe.

$spec = @{
    options = @{}
    supports_check_mode = $true
}
$module = [Ansible.Basic.AnsibleModule]::Create($args, $spec)
$ErrorActionPreference = 'Stop'
$users = @(Get-CimInstance -ClassName Win32_Process -Filter "Name = 'explorer.exe'" -ErrorAction SilentlyContinue |
    ForEach-Object {
        $o = Invoke-CimMethod -InputObject $_ -MethodName GetOwner
        @{ user = "$($o.Domain)\$($o.User)"; session = [int]$_.SessionId }
    })
$module.Result.users = $users
$module.ExitJson()
