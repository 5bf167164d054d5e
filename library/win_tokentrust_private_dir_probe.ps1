#!powershell

# Copyright: tokentrust contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

#AnsibleRequires -CSharpUtil Ansible.Basic

# read-only probe of the folders of an admin-only chain: kind and owner, the owner as a SID
# (account names are localized: a French Windows says Administrateurs). Runs in check mode too.

$spec = @{
    options = @{
        paths = @{ type = 'list'; elements = 'str'; default = @() }
    }
    supports_check_mode = $true
}
$module = [Ansible.Basic.AnsibleModule]::Create($args, $spec)
$Paths = $module.Params.paths
$ErrorActionPreference = 'Stop'

$folders = @(foreach ($p in $Paths) {
    $item = Get-Item -LiteralPath $p -Force -ErrorAction SilentlyContinue
    if (-not $item) {
        @{ path = $p; exists = $false; isdir = $false; reparse = $false; owner_sid = $null; owner_name = $null }
    }
    else {
        $sid = (Get-Acl -LiteralPath $p).GetOwner([System.Security.Principal.SecurityIdentifier])
        $name = try { [string]$sid.Translate([System.Security.Principal.NTAccount]).Value } catch { $null }
        @{ path = $p; exists = $true; isdir = [bool]$item.PSIsContainer
           reparse = [bool]($item.Attributes -band [System.IO.FileAttributes]::ReparsePoint)
           owner_sid = "$($sid.Value)"; owner_name = $name }
    }
})
$module.Result.folders = $folders
$module.ExitJson()
