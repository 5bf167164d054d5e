# tokentrust: read-only list of the users logged on at this PC (console or RDP): owners of explorer.exe, one
# per interactive session. Runs in check mode too. The WinRM session itself has no explorer.exe.
[CmdletBinding(SupportsShouldProcess)]
param ()
$ErrorActionPreference = 'Stop'
$Ansible.Changed = $false
$users = @(Get-CimInstance -ClassName Win32_Process -Filter "Name = 'explorer.exe'" -ErrorAction SilentlyContinue |
    ForEach-Object {
        $o = Invoke-CimMethod -InputObject $_ -MethodName GetOwner
        @{ user = "$($o.Domain)\$($o.User)"; session = [int]$_.SessionId }
    })
$Ansible.Result = @{ users = $users }
