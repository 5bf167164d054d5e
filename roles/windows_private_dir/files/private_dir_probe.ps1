# tokentrust: read-only probe of the folders of an admin-only chain: kind and owner, the owner as a SID
# (account names are localized: a French Windows says Administrateurs). Runs in check mode too.
[CmdletBinding(SupportsShouldProcess)]
param (
    [string[]]$Paths = @()
)
$ErrorActionPreference = 'Stop'
$Ansible.Changed = $false

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
$Ansible.Result = @{ folders = $folders }
